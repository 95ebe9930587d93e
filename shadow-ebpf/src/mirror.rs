//! Input Data Mirror datapath.
//!
//! * `shadow_mirror` (TC ingress on the primary's interface): parses each packet, matches it
//!   against the rules in `MIRROR_RULES`, and clones matches to the shadow interface with the
//!   clone's destination MAC rewritten to the shadow end. The original always continues,
//!   byte for byte: the MAC is rewritten only for the duration of `bpf_clone_redirect` and
//!   restored right after; every failure is counted and the packet passed (fail open).
//! * `shadow_mask` (TC egress on the shadow interface): TCP session translation of each clone
//!   (`shadow_common::tcp`), then masking.
//! * `shadow_isn` (TC egress on the primary's interface): learns the primary's ISN and FIN
//!   of tracked TCP sessions. Always passes.
//! * `shadow_learn` (TC ingress on the shadow interface, first in the chain, before the
//!   replica's `shadow_discard`): learns the shadow's ISN, SND.NXT, TSval and resets from
//!   what it transmits. Always passes on to the discard, which drops it all.
//! * `shadow_load` (XDP on the same interface): per-rule packets, bytes and new TCP
//!   connections, the earliest load signal for the forecaster. Always `XDP_PASS`.
#![no_std]
#![no_main]
// BPF inline assembly for the atomic add of the token buckets (core has no atomic RMW on bpf).
#![feature(asm_experimental_arch)]

use aya_ebpf::{
    bindings::{
        __sk_buff, xdp_action, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_SHOT, TC_ACT_UNSPEC,
    },
    cty::c_void,
    helpers::generated::{
        bpf_csum_diff, bpf_ktime_get_ns, bpf_l3_csum_replace, bpf_l4_csum_replace, bpf_loop,
        bpf_redirect, bpf_skb_load_bytes, bpf_skb_store_bytes, bpf_xdp_get_buff_len,
        bpf_xdp_load_bytes,
    },
    macros::{classifier, map, xdp},
    maps::{Array, LruHashMap, PerCpuArray},
    programs::{TcContext, XdpContext},
    EbpfContext as _,
};
use shadow_common::latency::{lat_bucket, LatHist, LatPending, LAT_BUCKETS, LAT_MAX_NS};
use shadow_common::mask::{
    body_segment, in_ranges, mask_http, seq_check, skip_body, BodyFit, CsumDelta, FlowKey,
    HttpState, MaskRule, MaskSpec, SeqVerdict, CLONE_MARK, CLONE_MARK_MASK, FALLBACK_MASK,
    F_SEQ_VALID, MASK_FILL_LEN, MASK_FILL_MAP_LEN, MASK_HTTP, MASK_RANGES, MAX_RANGES,
    MAX_SCAN_LIMIT, ST_BODY_SKIP, ST_BROKEN,
};
use shadow_common::mirror::{
    bucket_check, byte_cost_ns, ctr, flow_hash, parse_flow, sampled, target_index, Flow,
    FlowTarget, MirrorConfig, MirrorRule, MirrorTarget, PacketView, RuleLoad, TokenBucket,
    FLAG_ENABLED, FLAG_LATENCY, FLAG_MASK_SLOT, FLAG_TCP_TRACK, FLAG_TCP_TRANSLATE, IPPROTO_TCP,
    IPPROTO_UDP, MAX_RULES, MAX_TARGETS, RULE_SLOTS, TCP_FLAG_ACK, TCP_FLAG_SYN,
};
use shadow_common::pseudo::{pseudonym_v4, pseudonym_v6, PseudoConfig};
use shadow_common::tcp::{
    ends_session, get32, hold_mark, hold_passes, idle, learn_shadow, must_wait, opt_step,
    translate_with, OptWalk, TcpFlow, TcpHoldConfig, Wait, F_CLIENT_FIN, F_PRIMARY, F_PRIMARY_FIN,
    F_SHADOW, F_SYN, MAX_OPT_BYTES, TCP_FIN, TCP_HDR_BUF, TCP_RST,
};
use shadow_ebpf::bump;

#[map]
static MIRROR_CFG: Array<MirrorConfig> = Array::with_max_entries(1, 0);
#[map]
static MIRROR_RULES: Array<MirrorRule> = Array::with_max_entries(RULE_SLOTS, 0);
#[map]
static MIRROR_TARGETS: Array<MirrorTarget> = Array::with_max_entries(MAX_TARGETS, 0);
#[map]
static MIRROR_FLOWS: LruHashMap<FlowKey, FlowTarget> = LruHashMap::with_max_entries(65536, 0);
#[map]
static TARGET_FLOWS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_TARGETS, 0);
#[map]
static MIRROR_CTRS: PerCpuArray<u64> = PerCpuArray::with_max_entries(ctr::N, 0);
#[map]
static MIRROR_TB: Array<TokenBucket> = Array::with_max_entries(1, 0);
#[map]
/// Two mask specs: the live one is `mask_slot()`; the agent writes the other and flips
/// `FLAG_MASK_SLOT` (a reload), so a reader never sees a half-written spec.
static MASK_SPEC: Array<MaskSpec> = Array::with_max_entries(2, 0);
#[map]
static MASK_RULES: Array<MaskRule> = Array::with_max_entries(RULE_SLOTS, 0);
#[map]
static MASK_FLOWS: LruHashMap<FlowKey, HttpState> = LruHashMap::with_max_entries(65536, 0);
#[map]
static MASK_RULE_CTRS: PerCpuArray<u64> = PerCpuArray::with_max_entries(RULE_SLOTS, 0);
#[map]
static MASK_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);
#[map]
static MASK_FILL: Array<[u8; MASK_FILL_MAP_LEN]> = Array::with_max_entries(1, 0);
#[map]
static PSEUDO_CFG: Array<PseudoConfig> = Array::with_max_entries(1, 0);
/// The real client address of each pseudonymised TCP session, by the session's 5-tuple as
/// the shadow sees it (its client the pseudonym), written from the session's SYN: the
/// shadow answers the pseudonym, and `shadow_learn` finds the session (`TCP_FLOWS`, keyed
/// by the real client) through this.
#[map]
static PSEUDO_BACK: LruHashMap<FlowKey, [u8; 16]> = LruHashMap::with_max_entries(65536, 0);
#[map]
static TCP_FLOWS: LruHashMap<FlowKey, TcpFlow> = LruHashMap::with_max_entries(65536, 0);
#[map]
static TCP_SCRATCH: PerCpuArray<TcpScratch> = PerCpuArray::with_max_entries(1, 0);
#[map]
static TCP_HOLD: Array<TcpHoldConfig> = Array::with_max_entries(1, 0);
#[map]
static RULE_LOAD: PerCpuArray<RuleLoad> = PerCpuArray::with_max_entries(RULE_SLOTS, 0);
#[map]
static LAT_PENDING: LruHashMap<FlowKey, LatPending> = LruHashMap::with_max_entries(65536, 0);
#[map]
static LAT_HIST: PerCpuArray<LatHist> = PerCpuArray::with_max_entries(MAX_TARGETS, 0);
#[map]
static LAT_SCRATCH: PerCpuArray<LatScratch> = PerCpuArray::with_max_entries(1, 0);
/// `flow` unchanged (`zero` is `MirrorConfig::opaque_zero`, always 0), but with every field
/// the parser may leave as a constant made unknown to the verifier: XORed with a value read
/// from a map. Kept as constants (the family, the offsets, whether there are ports, one
/// set per parser path), they had the verifier check everything after the parse (the rule
/// loop, the flow's target, the token bucket) once per parser path: `shadow_mirror` went
/// from 379,597 verified instructions to 38,442 this way, `shadow_load` from 119,259 to
/// 60,353, with no difference in run time measurable by `BPF_PROG_TEST_RUN` (137-165 ns
/// per unselected packet either way). Copying the flow into a per-CPU map value does the
/// same for the verifier (19,398) but cost 45 ns more per packet.
#[inline(always)]
fn unknown_to_verifier(mut flow: Flow, zero: u32) -> Flow {
    let z8 = zero as u8;
    let z16 = zero as u16;
    flow.family ^= z8;
    flow.proto ^= z8;
    flow.has_ports = (flow.has_ports as u8 ^ z8) != 0;
    flow.tcp_flags ^= z8;
    flow.l3_off ^= z16;
    flow.l4_off ^= z16;
    flow.sport ^= z16;
    flow.dport ^= z16;
    flow
}

/// `N` bytes at `off` read directly from `data..end` (an skb's linear data, or an XDP
/// frame's first buffer), when they lie inside it; the callers fall back to their helper
/// (paged data, fragments). The helper call was most of the parsers' cost per packet.
#[inline(always)]
fn read_direct<const N: usize>(data: usize, end: usize, off: usize) -> Option<[u8; N]> {
    // `<` rather than `<=` (one byte more than needed): LLVM turns `p + N <= end` into
    // `p + N - 1 < end` for small N, from which the verifier grants one byte less than
    // the load reads. A load ending exactly at `data_end` takes the helper.
    if off < 0x1000 && data + off + N < end {
        // SAFETY: `data + off .. data + off + N` lies inside the packet data, checked
        // against `end` just above.
        return Some(unsafe { core::ptr::read_unaligned((data + off) as *const [u8; N]) });
    }
    None
}

struct Skb<'a>(&'a TcContext);

impl PacketView for Skb<'_> {
    /// Headers in the linear part directly ([`read_direct`]), anything beyond it through
    /// `bpf_skb_load_bytes`.
    #[inline(always)]
    fn load<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        if let Some(b) = read_direct(self.0.data(), self.0.data_end(), off) {
            return Some(b);
        }
        self.0.load::<[u8; N]>(off).ok()
    }
}

struct Xdp<'a>(&'a XdpContext);

impl PacketView for Xdp<'_> {
    /// The frame's first buffer directly ([`read_direct`]), a multi-buffer frame's fragments
    /// through `bpf_xdp_load_bytes`.
    #[inline(always)]
    fn load<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        if let Some(b) = read_direct(self.0.data(), self.0.data_end(), off) {
            return Some(b);
        }
        let mut buf = [0u8; N];
        // SAFETY: the helper bounds-checks `off..off+N` against the frame and writes at most
        // N bytes into `buf`.
        let rc = unsafe {
            bpf_xdp_load_bytes(
                self.0.as_ptr() as *mut _,
                off as u32,
                buf.as_mut_ptr() as *mut _,
                N as u32,
            )
        };
        (rc == 0).then_some(buf)
    }
}

#[inline(always)]
fn count(idx: u32) {
    bump!(MIRROR_CTRS, idx, 1);
}

/// Slot of the first live rule selecting `flow` (in the live set: see `RULE_SLOTS`).
#[inline(always)]
fn find_rule(cfg: &MirrorConfig, flow: &Flow) -> Option<u32> {
    let n = if cfg.n_rules < MAX_RULES {
        cfg.n_rules
    } else {
        MAX_RULES
    };
    let base = if cfg.rule_base == MAX_RULES {
        MAX_RULES
    } else {
        0
    };
    let mut i = 0;
    while i < MAX_RULES {
        if i >= n {
            return None;
        }
        if let Some(rule) = MIRROR_RULES.get(base + i) {
            if rule.matches(flow) {
                return Some(base + i);
            }
        }
        i += 1;
    }
    None
}

#[classifier]
pub fn shadow_mirror(ctx: TcContext) -> i32 {
    count(ctr::SEEN);
    let outcome = try_mirror(&ctx);
    count(outcome);
    // Pass the original on to whatever comes next (TCX_NEXT / TC_ACT_UNSPEC), untouched.
    TC_ACT_UNSPEC
}

/// Returns the counter that describes what happened to this packet's clone.
#[inline(always)]
fn try_mirror(ctx: &TcContext) -> u32 {
    let Some(cfg) = MIRROR_CFG.get(0) else {
        return ctr::DISABLED;
    };
    if cfg.flags & FLAG_ENABLED == 0 {
        return ctr::DISABLED;
    }
    let Some(flow) = parse_flow(&Skb(ctx)) else {
        return ctr::NOT_IP;
    };
    let flow = &unknown_to_verifier(flow, cfg.opaque_zero);
    let Some(rule) = find_rule(cfg, flow) else {
        return ctr::NO_MATCH;
    };
    count(ctr::MATCHED);
    let h = flow_hash(flow, cfg.hash_seed);
    if !sampled(h, cfg.sample_ppm) {
        return ctr::SAMPLED_OUT;
    }
    let (ifindex, mac) = match pick_target(cfg, flow, h) {
        Ok(t) => t,
        Err(c) => return c,
    };
    if !take_tokens(cfg, ctx.len() as u64) {
        return ctr::CAPPED;
    }
    let Some(orig_dst) = Skb(ctx).load::<6>(0) else {
        return ctr::REWRITE_FAILED;
    };
    // A shadow side that holds the primary's MAC (as replicas do) needs no rewrite. That
    // saves more than two stores: once the clone shares the packet's data, writing the
    // original back makes the kernel copy the original's head (`pskb_expand_head`).
    let rewrite = orig_dst != mac;
    if rewrite && ctx.store(0, &mac, 0).is_err() {
        return ctr::REWRITE_FAILED;
    }
    // The clone carries the rule in its mark for the masking program on the shadow
    // interface; the original gets its own mark back right after.
    // SAFETY: the context pointer is the program's `__sk_buff`; reading `mark` is allowed.
    let orig_mark = unsafe { (*(ctx.as_ptr() as *const __sk_buff)).mark };
    ctx.set_mark(CLONE_MARK | rule);
    let cloned = ctx.clone_redirect(ifindex, 0);
    ctx.set_mark(orig_mark);
    if rewrite && ctx.store(0, &orig_dst, 0).is_err() {
        return ctr::RESTORE_FAILED;
    }
    match cloned {
        Ok(()) => {
            bump!(MIRROR_CTRS, ctr::CLONED_BYTES, ctx.len() as u64);
            ctr::CLONED
        }
        Err(_) => ctr::CLONE_FAILED,
    }
}

/// The interface and MAC this packet's clone goes to: the target its flow was assigned to
/// on its first clone (a TCP flow: on its SYN), by hash over the live targets. A flow whose
/// target is gone (the replica was removed, or its slot now holds another) gets no clone,
/// `Err(ctr::TARGET_GONE)`: flows never move between replicas; only new flows see a new
/// replica count.
#[inline(always)]
fn pick_target(cfg: &MirrorConfig, flow: &Flow, h: u32) -> Result<(u32, [u8; 6]), u32> {
    if cfg.n_targets == 0 {
        return Ok((cfg.shadow_ifindex, cfg.shadow_mac));
    }
    let n = if cfg.n_targets < MAX_TARGETS {
        cfg.n_targets
    } else {
        MAX_TARGETS
    };
    let key = FlowKey::of(flow);
    let tcp = flow.proto == IPPROTO_TCP;
    let syn = tcp && flow.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN;
    // SAFETY: the value is copied out at once; LRU entries may be evicted later.
    if let Some(ft) = unsafe { MIRROR_FLOWS.get(key) } {
        let ft = *ft;
        if ft.index < n {
            if let Some(t) = MIRROR_TARGETS.get(ft.index) {
                if t.gen == ft.gen {
                    return Ok((t.ifindex, t.mac));
                }
            }
        }
        if !syn {
            return Err(ctr::TARGET_GONE);
        }
        // A new connection on the 5-tuple of one whose replica is gone: assigned afresh.
    }
    let index = target_index(h, n);
    let t = MIRROR_TARGETS.get(index).ok_or(ctr::TARGET_GONE)?;
    if tcp && !syn && cfg.flags & FLAG_TCP_TRACK != 0 {
        // Joined mid-stream: the masking program drops it as untracked; not assigned.
        return Ok((t.ifindex, t.mac));
    }
    let ft = FlowTarget { index, gen: t.gen };
    if MIRROR_FLOWS.insert(key, ft, 0).is_ok() {
        count(ctr::FLOWS_ASSIGNED);
        bump!(TARGET_FLOWS, index, 1);
    }
    Ok((t.ifindex, t.mac))
}

/// Charge one clone of `len` bytes to the global token buckets; false when either is empty
/// (nothing is charged then).
#[inline(always)]
fn take_tokens(cfg: &MirrorConfig, len: u64) -> bool {
    if cfg.cap_pkt_ns == 0 && cfg.cap_byte_ps == 0 {
        return true;
    }
    let Some(tb) = MIRROR_TB.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: `tb` points into the map's single value, live for the program's run.
    let (pkt, byte) = unsafe {
        (
            core::ptr::addr_of_mut!((*tb).pkt_tat_ns),
            core::ptr::addr_of_mut!((*tb).byte_tat_ns),
        )
    };
    // SAFETY (all reads/writes below): aligned 8-byte fields of the map value above. Plain
    // loads/stores of 8 aligned bytes do not tear on BPF; the adds are atomic.
    let (pkt_tat, byte_tat) = unsafe { (pkt.read_volatile(), byte.read_volatile()) };
    let (pkt_base, pkt_ok) = bucket_check(pkt_tat, now, cfg.cap_burst_ns);
    let (byte_base, byte_ok) = bucket_check(byte_tat, now, cfg.cap_burst_ns);
    let pkt_ok = cfg.cap_pkt_ns == 0 || pkt_ok;
    let byte_ok = cfg.cap_byte_ps == 0 || byte_ok;
    if !(pkt_ok && byte_ok) {
        return false;
    }
    if cfg.cap_pkt_ns != 0 {
        unsafe {
            if pkt_base != pkt_tat {
                pkt.write_volatile(pkt_base);
            }
            atomic_add(pkt, cfg.cap_pkt_ns);
        }
    }
    if cfg.cap_byte_ps != 0 {
        unsafe {
            if byte_base != byte_tat {
                byte.write_volatile(byte_base);
            }
            atomic_add(byte, byte_cost_ns(len, cfg.cap_byte_ps));
        }
    }
    true
}

/// `*p += v` as one BPF atomic instruction (`BPF_ATOMIC | BPF_ADD`, no fetch).
///
/// # Safety
/// `p` must be an aligned pointer into a map value.
#[inline(always)]
unsafe fn atomic_add(p: *mut u64, v: u64) {
    // SAFETY: per the contract; the instruction touches exactly the 8 bytes at `p`.
    unsafe {
        core::arch::asm!("lock *(u64 *)({0} + 0) += {1}", in(reg) p, in(reg) v);
    }
}

/// `*p |= v` as one BPF atomic instruction (`BPF_ATOMIC | BPF_OR`, no fetch).
///
/// # Safety
/// `p` must be an aligned pointer into a map value.
#[inline(always)]
unsafe fn atomic_or(p: *mut u64, v: u64) {
    // SAFETY: per the contract; the instruction touches exactly the 8 bytes at `p`.
    unsafe {
        core::arch::asm!("lock *(u64 *)({0} + 0) |= {1}", in(reg) p, in(reg) v);
    }
}

// ---------------------------------------------------------------------------------------
// TCP sessions in the shadow (`shadow_common::tcp`).
// ---------------------------------------------------------------------------------------

/// Per-CPU working state of the TCP programs (kept off the 512-byte stack the masking
/// callbacks share).
#[repr(C)]
pub struct TcpScratch {
    hdr: [u8; TCP_HDR_BUF],
    key: FlowKey,
    csum: CsumDelta,
    walk: OptWalk,
    hlen: u32,
    snapshot: TcpFlow,
}

/// One step of the TCP options walk over `TCP_SCRATCH` (from `bpf_loop`). 1 stops.
extern "C" fn opt_cb(_i: u64, _ctx: *mut c_void) -> i64 {
    let Some(sp) = TCP_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: per-CPU value, only this program on this CPU touches it.
    let s = unsafe { &mut *sp };
    if opt_step(&s.hdr, s.hlen as usize, &mut s.walk) {
        0
    } else {
        1
    }
}

/// Locate the options of the header in `s.hdr` (`s.hlen`) into `s.walk.opts`.
#[inline(always)]
fn walk_options(s: &mut TcpScratch) -> bool {
    s.walk = OptWalk::new();
    // SAFETY: `opt_cb` is a static callback that only touches the per-CPU scratch.
    let rc = unsafe {
        bpf_loop(
            MAX_OPT_BYTES as u32,
            opt_cb as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    rc >= 0
}

/// Load the TCP header at `l4` into `s.hdr`; its length (20..=60).
#[inline(always)]
fn load_tcp_hdr(ctx: &TcContext, l4: usize, s: &mut TcpScratch) -> Option<u32> {
    let doff = ((Skb(ctx).load::<1>(l4 + 12)?[0] >> 4) as u32) * 4;
    if doff < 20 {
        return None;
    }
    let n = bound::<{ TCP_HDR_BUF as u64 }>(doff);
    // SAFETY: `hdr` holds 64 bytes and 0 < n <= 64.
    let rc = unsafe {
        bpf_skb_load_bytes(
            ctx.as_ptr() as *const c_void,
            l4 as u32,
            s.hdr.as_mut_ptr() as *mut c_void,
            n,
        )
    };
    (rc == 0).then_some(n)
}

/// End of the IP packet (its length field, or the skb's when that is 0, e.g. BIG TCP).
#[inline(always)]
fn ip_end(ctx: &TcContext, flow: &Flow) -> Option<usize> {
    let l3 = flow.l3_off as usize;
    let len = ctx.len() as usize;
    let end = if flow.family == 4 {
        let t = u16::from_be_bytes(Skb(ctx).load::<2>(l3 + 2)?) as usize;
        if t == 0 {
            len
        } else {
            l3 + t
        }
    } else {
        let t = u16::from_be_bytes(Skb(ctx).load::<2>(l3 + 4)?) as usize;
        if t == 0 {
            len
        } else {
            l3 + 40 + t
        }
    };
    Some(if end < len { end } else { len })
}

#[inline(always)]
fn remove_flow(key: &FlowKey) {
    let _ = TCP_FLOWS.remove(key);
}

/// Counter index that counts nothing (`bump!` ignores indices past the end).
const NO_COUNT: u32 = ctr::N;

/// Send a copy of this packet into the hold loop for its pass `passes` (the caller drops or
/// sends on the original). The copy's mark carries the pass count and the rule.
#[inline(always)]
fn hold(ctx: &TcContext, hc: &TcpHoldConfig, passes: u32, rule: u32) -> bool {
    ctx.set_mark(hold_mark(passes, rule));
    let ok = ctx.clone_redirect(hc.ifindex, 0).is_ok();
    ctx.set_mark(CLONE_MARK | rule);
    ok
}

/// `held -= 1` for a segment leaving the hold loop.
#[inline(always)]
fn unhold(fp: *mut TcpFlow) {
    // SAFETY: aligned u64 field of a live map value; adding all-ones subtracts one.
    unsafe { atomic_add(core::ptr::addr_of_mut!((*fp).held), u64::MAX) };
}

/// The TCP session part of `shadow_mask` for one clone (or, `passes = Some(n)`, one segment
/// back from its n-th trip through the hold loop): create the session on the client's SYN
/// (and send a keeper copy of the SYN into the loop, which re-sends it while the shadow has
/// not answered), drop clones of untracked or idle sessions (counted), hold segments that
/// must wait (`must_wait`) in the loop, translate the rest in place. `Err(counter)`: do not
/// send this packet, counted there.
// Keys by reference into the per-CPU scratch on purpose (see `try_mask`).
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(always)]
fn tcp_clone(
    ctx: &TcContext,
    flow: &Flow,
    cfg: &MirrorConfig,
    rule: u32,
    passes: Option<u32>,
) -> Result<(), u32> {
    // By reference: the stack is shared with the masking callbacks (512 bytes in all).
    let hc = TCP_HOLD.get(0).ok_or(ctr::TCP_FAILED)?;
    let sp = TCP_SCRATCH.get_ptr_mut(0).ok_or(ctr::TCP_FAILED)?;
    // SAFETY: per-CPU value; TC programs do not nest on a CPU while using it.
    let s = unsafe { &mut *sp };
    s.key = FlowKey::of(flow);
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let fl = flow.tcp_flags;
    if fl & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN {
        if let Some(p) = passes {
            // The keeper of a SYN: done once the shadow answered; otherwise round again,
            // and every `syn_retry_ns` the SYN goes to the shadow once more.
            let Some(fp) = TCP_FLOWS.get_ptr_mut(&s.key) else {
                return Err(NO_COUNT);
            };
            // SAFETY: a live map value, read field by field.
            let (flags, syn_ns, sent_ns) =
                unsafe { ((*fp).flags, (*fp).syn_ns, (*fp).syn_sent_ns) };
            if flags & F_SHADOW != 0 {
                return Err(NO_COUNT);
            }
            if now.wrapping_sub(syn_ns) > hc.hold_ns {
                return Err(ctr::TCP_HOLD_EXPIRED);
            }
            if !hold(ctx, hc, p + 1, rule) {
                return Err(ctr::TCP_FAILED);
            }
            if hc.syn_retry_ns != 0 && now.wrapping_sub(sent_ns) >= hc.syn_retry_ns {
                // SAFETY: aligned field of a live map value; races only delay a retry.
                unsafe { (*fp).syn_sent_ns = now };
                count(ctr::TCP_SYN_RETRIES);
                return Ok(());
            }
            return Err(ctr::TCP_HOLD_LOOPS);
        }
        let isn = Skb(ctx)
            .load::<4>(flow.l4_off as usize + 4)
            .map(u32::from_be_bytes)
            .ok_or(ctr::TCP_FAILED)?;
        if let Some(f) = TCP_FLOWS.get_ptr_mut(&s.key) {
            // SAFETY: a live map value; `last_ns` has this program as its only writer.
            unsafe {
                if (*f).client_isn == isn && !idle(&*f, now, cfg.tcp_idle_ns) {
                    // A retransmitted SYN of a session already tracked.
                    (*f).last_ns = now;
                    return Ok(());
                }
            }
            // Another ISN: a new connection on the 5-tuple of one still live here (the
            // client reused its port before the shadow ended the old session). It starts
            // afresh rather than being translated with the old session's numbers.
        }
        let f = TcpFlow {
            flags: F_SYN,
            last_ns: now,
            syn_ns: now,
            syn_sent_ns: now,
            client_isn: isn,
            ..TcpFlow::default()
        };
        TCP_FLOWS
            .insert(&s.key, &f, 0)
            .map_err(|_| ctr::TCP_FAILED)?;
        count(ctr::TCP_SESSIONS);
        if hc.ifindex != 0 && hc.syn_retry_ns != 0 {
            // Best effort: without the keeper the session simply gets no SYN retry.
            let _ = hold(ctx, hc, 0, rule);
        }
        return Ok(());
    }
    let Some(fp) = TCP_FLOWS.get_ptr_mut(&s.key) else {
        return Err(if passes.is_some() {
            // Ended (client RST) or evicted while held.
            ctr::TCP_HOLD_EXPIRED
        } else {
            ctr::TCP_NOT_TRACKED
        });
    };
    // SAFETY: a live map value (an LRU entry may be recycled under us: then this session's
    // translation is wrong for one segment, and the shadow at worst resets it, counted).
    let f = unsafe { &mut *fp };
    if idle(f, now, cfg.tcp_idle_ns) {
        remove_flow(&s.key);
        return Err(ctr::TCP_IDLE);
    }
    if passes.is_none() {
        f.last_ns = now;
    }
    if f.flags & (F_PRIMARY | F_SHADOW) != F_PRIMARY | F_SHADOW && fl & TCP_RST != 0 {
        remove_flow(&s.key);
        count(ctr::TCP_CLOSED);
        return Err(ctr::TCP_WAITING);
    }
    let l4 = flow.l4_off as usize;
    let hlen = load_tcp_hdr(ctx, l4, s).ok_or(ctr::TCP_FAILED)?;
    let end = ip_end(ctx, flow).ok_or(ctr::TCP_FAILED)?;
    let plen = end.saturating_sub(l4 + hlen as usize) as u32;
    let ack = get32(&s.hdr, 8);
    // SAFETY: a live map value, copied into the scratch (its fields are words; a torn read
    // costs at worst one more trip through the loop).
    s.snapshot = unsafe { *fp };
    let snap = &s.snapshot;
    match must_wait(snap, fl, ack, passes.is_none()) {
        Some(w) if hc.ifindex != 0 => {
            let next = passes.map_or(0, |p| p + 1);
            let since = if w == Wait::Handshake {
                snap.syn_ns
            } else if passes.is_some() {
                snap.hold_ns
            } else {
                now
            };
            if now.wrapping_sub(since) <= hc.hold_ns {
                if !hold(ctx, hc, next, rule) {
                    if passes.is_some() {
                        unhold(fp);
                    }
                    return Err(ctr::TCP_FAILED);
                }
                if passes.is_none() {
                    // SAFETY: aligned u64 fields of a live map value (a race on `hold_ns`
                    // only moves an expiry).
                    unsafe {
                        if snap.held == 0 {
                            (*fp).hold_ns = now;
                        }
                        atomic_add(core::ptr::addr_of_mut!((*fp).held), 1);
                    }
                    return Err(ctr::TCP_WAITING);
                }
                return Err(ctr::TCP_HOLD_LOOPS);
            }
            // Held as long as allowed. Never established: dropped. Otherwise released
            // (a closing segment's ACK is then clamped to what the shadow sent).
            if passes.is_some() {
                unhold(fp);
            }
            if w == Wait::Handshake {
                return Err(ctr::TCP_HOLD_EXPIRED);
            }
            count(ctr::TCP_HOLD_EXPIRED);
        }
        // No hold loop: a segment before the shadow's ISN is dropped, as it cannot be
        // translated; closing segments go with a clamped ACK.
        Some(Wait::Handshake) => return Err(ctr::TCP_WAITING),
        _ => {
            if passes.is_some() {
                unhold(fp);
                count(ctr::TCP_HOLD_RELEASED);
            }
        }
    }
    if cfg.flags & FLAG_TCP_TRANSLATE != 0 {
        s.csum = CsumDelta::default();
        s.hlen = hlen;
        if !walk_options(s) {
            return Err(ctr::TCP_FAILED);
        }
        // SAFETY: as above (the callback has returned).
        let s = unsafe { &mut *sp };
        if translate_with(&mut s.hdr, &s.walk.opts, &s.snapshot, &mut s.csum) {
            // SAFETY: `hdr` holds 64 bytes and `hlen` is in 1..=64 (bounded above).
            let rc = unsafe {
                bpf_skb_store_bytes(
                    ctx.as_ptr() as *mut __sk_buff,
                    l4 as u32,
                    s.hdr.as_ptr() as *const c_void,
                    bound::<{ TCP_HDR_BUF as u64 }>(hlen),
                    0,
                )
            };
            if rc != 0 {
                return Err(ctr::TCP_FAILED);
            }
            let diff = s.csum.kernel_diff();
            // SAFETY: the TCP checksum field; diff mode (size flags 0).
            let rc = unsafe {
                bpf_l4_csum_replace(
                    ctx.as_ptr() as *mut __sk_buff,
                    (l4 + 16) as u32,
                    0,
                    diff as u64,
                    0,
                )
            };
            if rc != 0 {
                return Err(ctr::TCP_FAILED);
            }
        }
        count(ctr::TCP_TRANSLATED);
    }
    if fl & TCP_FIN != 0 {
        // SAFETY: aligned u64 field of a live map value.
        unsafe { atomic_or(core::ptr::addr_of_mut!((*fp).flags), F_CLIENT_FIN) };
    }
    // SAFETY: a live map value (re-read after the atomic update).
    let f = unsafe { &*fp };
    if ends_session(f, fl, plen) {
        remove_flow(&s.key);
        count(ctr::TCP_CLOSED);
    }
    Ok(())
}

/// TC egress on each shadow interface, before `shadow_mask` (TCX: attached first; clsact:
/// lower priority number): the TCP session part of each clone (`tcp_clone`), and the
/// decision for segments back from the hold loop. Passes ("next") what may go on to masking;
/// drops (counted) what must not be sent now. A program of its own so its stack is not part
/// of the masking program's 512-byte budget.
#[classifier]
pub fn shadow_tcp(ctx: TcContext) -> i32 {
    // SAFETY: reading `mark` of the program's own `__sk_buff`.
    let mark = unsafe { (*(ctx.as_ptr() as *const __sk_buff)).mark };
    // A TCP segment back from the hold loop, or a fresh clone.
    let passes = hold_passes(mark);
    if passes.is_none() && mark & CLONE_MARK_MASK != CLONE_MARK {
        return TC_ACT_UNSPEC;
    }
    // Held segments never go on undecided.
    let other = if passes.is_some() {
        TC_ACT_SHOT
    } else {
        TC_ACT_UNSPEC
    };
    let rule = mark & 0xff;
    let Some(cfg) = MIRROR_CFG.get(0) else {
        return other;
    };
    if cfg.flags & FLAG_TCP_TRACK == 0 {
        return other;
    }
    match parse_flow(&Skb(&ctx)) {
        Some(flow) if flow.proto == IPPROTO_TCP && flow.has_ports => {
            match tcp_clone(&ctx, &flow, cfg, rule, passes) {
                Ok(()) => {
                    // Released from the loop: a clone like any other for the masking.
                    ctx.set_mark(CLONE_MARK | rule);
                    TC_ACT_UNSPEC
                }
                Err(c) => {
                    count(c);
                    TC_ACT_SHOT
                }
            }
        }
        // Fragments of a tracked session cannot be translated: never sent as they are.
        Some(flow) if flow.proto == IPPROTO_TCP => {
            count(ctr::TCP_FAILED);
            TC_ACT_SHOT
        }
        _ => other,
    }
}

/// TC ingress on the far end of the hold loop's veth: a held segment is back from its delay;
/// send it to the egress of its flow's shadow interface, where `shadow_mask` decides again
/// (release, another pass, or expiry). Anything else arriving here is dropped.
#[classifier]
pub fn shadow_hold(ctx: TcContext) -> i32 {
    match hold_target(&ctx) {
        // SAFETY: plain helper call; the kernel checks the interface.
        Some(ifindex) => unsafe { bpf_redirect(ifindex, 0) as i32 },
        None => TC_ACT_SHOT,
    }
}

#[inline(always)]
fn hold_target(ctx: &TcContext) -> Option<u32> {
    // SAFETY: reading `mark` of the program's own `__sk_buff`.
    let mark = unsafe { (*(ctx.as_ptr() as *const __sk_buff)).mark };
    hold_passes(mark)?;
    let cfg = MIRROR_CFG.get(0)?;
    if cfg.n_targets == 0 {
        return Some(cfg.shadow_ifindex);
    }
    let flow = parse_flow(&Skb(ctx))?;
    // SAFETY: the value is copied out at once.
    let ft = unsafe { *MIRROR_FLOWS.get(FlowKey::of(&flow))? };
    let t = MIRROR_TARGETS.get(ft.index)?;
    if ft.index >= cfg.n_targets || t.gen != ft.gen {
        count(ctr::TARGET_GONE);
        return None;
    }
    Some(t.ifindex)
}

/// TC egress on the primary's interface: the primary's SYN-ACK (its ISN) and FIN of each
/// tracked session. Never changes or drops anything.
#[classifier]
pub fn shadow_isn(ctx: TcContext) -> i32 {
    try_isn(&ctx);
    TC_ACT_UNSPEC
}

#[inline(always)]
fn try_isn(ctx: &TcContext) {
    let Some(cfg) = MIRROR_CFG.get(0) else {
        return;
    };
    if cfg.flags & FLAG_TCP_TRACK == 0 {
        return;
    }
    let Some(flow) = parse_flow(&Skb(ctx)) else {
        return;
    };
    if flow.proto != IPPROTO_TCP
        || !flow.has_ports
        || flow.tcp_flags & (TCP_FLAG_SYN | TCP_FIN) == 0
    {
        return;
    }
    let key = FlowKey::of(&flow).reversed();
    let Some(fp) = TCP_FLOWS.get_ptr_mut(key) else {
        return;
    };
    let l4 = flow.l4_off as usize;
    if flow.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN | TCP_FLAG_ACK {
        let Some(seq) = Skb(ctx).load::<4>(l4 + 4) else {
            return;
        };
        // SAFETY: live map value; `primary_isn` has this program as its only writer, and
        // the flag is published after it.
        unsafe {
            (*fp).primary_isn = u32::from_be_bytes(seq);
            atomic_or(core::ptr::addr_of_mut!((*fp).flags), F_PRIMARY);
        }
    }
    if flow.tcp_flags & TCP_FIN != 0 {
        // SAFETY: as above.
        unsafe { atomic_or(core::ptr::addr_of_mut!((*fp).flags), F_PRIMARY_FIN) };
    }
}

/// TC ingress on the shadow interface, first in the chain: learn from what the shadow
/// transmits. Returns "next": the replica's `shadow_discard` then drops everything.
#[classifier]
pub fn shadow_learn(ctx: TcContext) -> i32 {
    lat_reply(&ctx);
    try_learn(&ctx);
    TC_ACT_UNSPEC
}

#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(always)]
fn try_learn(ctx: &TcContext) {
    let Some(cfg) = MIRROR_CFG.get(0) else {
        return;
    };
    if cfg.flags & FLAG_TCP_TRACK == 0 {
        return;
    }
    let Some(flow) = parse_flow(&Skb(ctx)) else {
        return;
    };
    if flow.proto != IPPROTO_TCP || !flow.has_ports {
        return;
    }
    let Some(sp) = TCP_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU value; TC programs do not nest on a CPU while using it.
    let s = unsafe { &mut *sp };
    s.key = FlowKey::of(&flow).reversed();
    let mut fp = TCP_FLOWS.get_ptr_mut(&s.key);
    if fp.is_none() && PSEUDO_CFG.get(0).is_some_and(|pc| pc.enabled != 0) {
        // A reply to a pseudonym: the session is keyed by the real client.
        // SAFETY: the value is copied out at once.
        if let Some(real) = unsafe { PSEUDO_BACK.get(&s.key) } {
            s.key.src = *real;
            fp = TCP_FLOWS.get_ptr_mut(&s.key);
        }
    }
    let Some(fp) = fp else {
        if flow.tcp_flags & TCP_RST != 0 {
            count(ctr::TCP_SHADOW_RESETS_UNTRACKED);
        }
        return;
    };
    let l4 = flow.l4_off as usize;
    let Some(hlen) = load_tcp_hdr(ctx, l4, s) else {
        return;
    };
    let Some(end) = ip_end(ctx, &flow) else {
        return;
    };
    let plen = end.saturating_sub(l4 + hlen as usize) as u32;
    s.hlen = hlen;
    if !walk_options(s) {
        return;
    }
    // SAFETY: as above (the callback has returned).
    let s = unsafe { &mut *sp };
    let o = s.walk.opts;
    let tsval = if o.ts != 0 {
        Some(get32(&s.hdr, o.ts as usize))
    } else {
        None
    };
    let seq = get32(&s.hdr, 4);
    // SAFETY: live map value; the shadow_* fields have this program as their only writer,
    // flags are ORed atomically after them.
    unsafe {
        let mut f = *fp;
        let before = f.flags;
        let l = learn_shadow(&mut f, seq, flow.tcp_flags, plen, tsval);
        (*fp).shadow_isn = f.shadow_isn;
        (*fp).shadow_nxt = f.shadow_nxt;
        (*fp).shadow_tsval = f.shadow_tsval;
        if f.flags & !before != 0 {
            atomic_or(core::ptr::addr_of_mut!((*fp).flags), f.flags & !before);
        }
        if l.established {
            count(ctr::TCP_ESTABLISHED);
        }
        if l.reset {
            count(ctr::TCP_SHADOW_RESETS);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Request→reply latency per replica (`shadow_common::latency`).
// ---------------------------------------------------------------------------------------

/// Per-CPU room for the latency helpers' map key and value (off the stack).
#[repr(C)]
pub struct LatScratch {
    key: FlowKey,
    pend: LatPending,
    /// The clone's real source address before `pseudonymise` rewrote it.
    real: [u8; 16],
}

/// `BPF_NOEXIST`: insert only when the key is absent.
const NOEXIST: u64 = 1;

/// Payload bytes of a TCP or UDP packet with ports (0 when unknown).
#[inline(always)]
fn l4_payload(ctx: &TcContext, flow: &Flow) -> u32 {
    let l4 = flow.l4_off as usize;
    let hlen = if flow.proto == IPPROTO_TCP {
        match Skb(ctx).load::<1>(l4 + 12) {
            Some([b]) => ((b >> 4) as usize) * 4,
            None => return 0,
        }
    } else {
        8
    };
    match ip_end(ctx, flow) {
        Some(end) => end.saturating_sub(l4 + hlen) as u32,
        None => 0,
    }
}

/// The flow of a TCP/UDP packet carrying payload, with its payload length.
#[inline(always)]
fn lat_flow(ctx: &TcContext) -> Option<(MirrorConfig, Flow)> {
    let cfg = *MIRROR_CFG.get(0)?;
    if cfg.flags & FLAG_LATENCY == 0 {
        return None;
    }
    let flow = parse_flow(&Skb(ctx))?;
    if !flow.has_ports || !(flow.proto == IPPROTO_TCP || flow.proto == IPPROTO_UDP) {
        return None;
    }
    Some((cfg, flow))
}

/// A clone leaves for the replica (`shadow_mask` passed it): start timing its flow's
/// request unless one is already pending. A new TCP session forgets any stale entry. The
/// timing is keyed as the replica sees the flow (a `pseudo`nymised clone's source is the
/// pseudonym, which the replica answers); its replica is found by the real flow.
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(always)]
fn lat_request(ctx: &TcContext, pseudo: bool) {
    let Some((cfg, flow)) = lat_flow(ctx) else {
        return;
    };
    let Some(sp) = LAT_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU value; TC programs do not nest on a CPU while using it.
    let s = unsafe { &mut *sp };
    s.key = FlowKey::of(&flow);
    if flow.proto == IPPROTO_TCP && flow.tcp_flags & TCP_FLAG_SYN != 0 {
        let _ = LAT_PENDING.remove(&s.key);
        return;
    }
    if l4_payload(ctx, &flow) == 0 {
        return;
    }
    let slot = if cfg.n_targets == 0 {
        0
    } else {
        if pseudo {
            // `MIRROR_FLOWS` is keyed by the real client (`pseudonymise` left it here).
            s.key.src = s.real;
        }
        // SAFETY: the value is copied out at once.
        let slot = unsafe { MIRROR_FLOWS.get(&s.key) }.map(|ft| ft.index);
        s.key.src = flow.src;
        match slot {
            Some(i) => i,
            None => return,
        }
    };
    if slot >= MAX_TARGETS {
        return;
    }
    // SAFETY: helper without arguments.
    s.pend = LatPending {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        slot,
        _pad: 0,
    };
    if LAT_PENDING.insert(&s.key, &s.pend, NOEXIST).is_ok() {
        if let Some(h) = LAT_HIST.get_ptr_mut(slot) {
            // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
            unsafe { (*h).requests += 1 };
        }
    }
}

/// The replica transmits (`shadow_learn`, before the discard): its first payload segment
/// after a pending request ends the timing.
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(always)]
fn lat_reply(ctx: &TcContext) {
    let Some((_, flow)) = lat_flow(ctx) else {
        return;
    };
    if l4_payload(ctx, &flow) == 0 {
        return;
    }
    let Some(sp) = LAT_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU value; TC programs do not nest on a CPU while using it.
    let s = unsafe { &mut *sp };
    s.key = FlowKey::of(&flow).reversed();
    // SAFETY: the value is copied out at once.
    let Some(p) = (unsafe { LAT_PENDING.get(&s.key) }) else {
        if let Some(h) = LAT_HIST.get_ptr_mut(0) {
            // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
            unsafe { (*h).unmatched += 1 };
        }
        return;
    };
    let p = *p;
    if LAT_PENDING.remove(&s.key).is_err() {
        // Another CPU took it first.
        return;
    }
    if p.slot >= MAX_TARGETS {
        return;
    }
    let Some(h) = LAT_HIST.get_ptr_mut(p.slot) else {
        return;
    };
    // SAFETY: helper without arguments.
    let d = unsafe { bpf_ktime_get_ns() }.saturating_sub(p.ts_ns);
    // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
    unsafe {
        if d > LAT_MAX_NS {
            (*h).expired += 1;
            return;
        }
        let us = d / 1000;
        (*h).replies += 1;
        (*h).sum_us += us;
        let mut b = lat_bucket(us) as u64;
        // Bounded in a form the verifier sees (the compiler folds a plain mask away).
        core::arch::asm!("{0} &= 255", inout(reg) b);
        const _: () = assert!(LAT_BUCKETS == 256);
        // No Rust bounds check (its panic path would end the program without an exit):
        // `b` <= 255 < LAT_BUCKETS by the mask above.
        *(*h).buckets.as_mut_ptr().add(b as usize) += 1;
    }
}

/// `n` (known to be in `1..=N`, `N` a power of two) in a form the verifier can bound: an
/// opaque mask the compiler cannot fold away, which would leave a helper's size unbounded.
#[inline(always)]
fn bound<const N: u64>(n: u32) -> u32 {
    const { assert!(N.is_power_of_two()) };
    let mut m = (n - 1) as u64;
    // SAFETY: pure register arithmetic.
    unsafe { core::arch::asm!("{0} &= {1}", inout(reg) m, const N - 1) };
    m as u32 + 1
}

/// Payload bytes masked per `bpf_loop` run (one chunk of the per-CPU scratch buffer).
const CHUNK: usize = MASK_FILL_LEN;
/// Chunks per segment at most: `MAX_SCAN_LIMIT` bytes.
const MAX_CHUNKS: u32 = MAX_SCAN_LIMIT / CHUNK as u32 + 1;

/// The masking program's per-CPU working state: one chunk of payload, the flow's parser
/// state while it runs, the rule, and the checksum bookkeeping. Kept in a map (not on the
/// stack) so the `bpf_loop` callback reaches it and the verifier sees the state as opaque
/// memory, which keeps verification cost independent of the payload length.
#[repr(C)]
pub struct Scratch {
    /// One chunk, plus room for the zero padding of the bulk fill's checksum.
    buf: [u8; CHUNK + 8],
    st: HttpState,
    rule: MaskRule,
    csum: CsumDelta,
    /// Payload offset of `buf[0]`.
    base: u32,
    /// Valid bytes in `buf`.
    len: u32,
    /// Bytes changed in this chunk / in the whole segment.
    changed: u32,
    total_changed: u32,
    /// Parse as HTTP.
    http: u8,
    /// Mask every byte (the "mask" fallback for bytes that cannot be parsed).
    all: u8,
    /// The fallback applied to at least one byte.
    fell_back: u8,
    /// The spec's fill byte (for the bulk fill, off the callback's stack).
    fill: u8,
    /// The kernel completes this clone's L4 checksum later (`CHECKSUM_PARTIAL`): the bulk
    /// fill neither reads nor sums the bytes it replaces.
    csum_deferred: u8,
    /// [`probe_csum`] added `CSUM_PROBE` to the checksum field: the final fix takes it out.
    probed: u8,
    /// The `MASK_SPEC` slot this segment is masked with (read once per segment).
    spec: u8,
    /// Whether the parser state goes back to the flow's entry afterwards, and whether the
    /// segment ends the flow (FIN or RST). In the map rather than in registers: values
    /// live across the `bpf_loop` calls are part of every state the verifier compares, and
    /// each distinct combination would have the callbacks verified once more.
    keep_state: u8,
    fin_rst: u8,
    _pad: [u8; 3],
    /// Payload bytes done so far in this segment.
    off: u32,
    /// Running `bpf_csum_diff` sum of the chunk being bulk-filled.
    sum: u32,
    /// The chunk `fill_ranges` works on: `[chunk_start, chunk_end)`.
    chunk_start: u32,
    chunk_end: u32,
    /// The flow's key in `MASK_FLOWS` (here rather than on the stack: the stack is shared
    /// with the callbacks and limited to 512 bytes for the whole chain).
    key: FlowKey,
}

/// What `chunk_cb` needs from the program's frame.
#[repr(C)]
struct ChunkCtx {
    skb: *mut __sk_buff,
    payload_off: u32,
    plen: u32,
    limit: u32,
    err: u32,
}

/// One chunk of the payload: skip a body by length, or load, mask byte by byte (`mask_cb`)
/// and store back. Returns 1 to stop.
extern "C" fn chunk_cb(_i: u64, cc: *mut c_void) -> i64 {
    // SAFETY: `cc` is the `ChunkCtx` `try_mask` passed to `bpf_loop`.
    let cc = unsafe { &mut *(cc as *mut ChunkCtx) };
    let Some(sp) = MASK_SCRATCH.get_ptr_mut(0) else {
        cc.err = 1;
        return 1;
    };
    // SAFETY: per-CPU value, only this program on this CPU touches it.
    let s = unsafe { &mut *sp };
    let plen = cc.plen;
    let mut off = s.off;
    if off >= plen {
        return 1;
    }
    if s.http != 0 && s.rule.flags & MASK_RANGES == 0 && s.st.st == ST_BODY_SKIP {
        off += skip_body(&mut s.st, plen - off);
        s.off = off;
        if off >= plen {
            return 1;
        }
    }
    if s.http != 0 && s.st.st == ST_BROKEN && s.all == 0 {
        // The flow (or this segment) cannot be followed: the rest of the segment takes the
        // fallback at once, decided here rather than per byte.
        s.fell_back = 1;
        if s.rule.fallback != FALLBACK_MASK {
            return 1;
        }
        s.all = 1;
        // The rest is filled in bulk by `fill_cb`, outside this callback (the callbacks'
        // stacks add up along the chain main → chunk_cb → mask_cb).
        return 1;
    }
    if off >= cc.limit && s.all == 0 {
        // Past the scan window with the parser in a state it must see: the rest of the
        // flow cannot be followed.
        if s.http != 0 {
            s.st.st = ST_BROKEN;
        }
        s.fell_back = 1;
        if s.rule.fallback != FALLBACK_MASK {
            return 1;
        }
        s.all = 1;
    }
    let rem = plen - off;
    let mut n = if rem > CHUNK as u32 {
        CHUNK as u32
    } else {
        rem
    };
    if s.all == 0 && off < cc.limit && n > cc.limit - off {
        // Stop this chunk at the scan window; the next one takes the fallback.
        n = cc.limit - off;
    }
    if n == 0 {
        return 1;
    }
    let n = bound::<{ CHUNK as u64 }>(n);
    if s.all != 0 {
        // Past the window with the "mask" fallback: `fill_cb` takes it from here.
        return 1;
    }
    let at = cc.payload_off + off;
    s.base = off;
    s.len = n;
    s.changed = 0;
    // SAFETY: `buf` holds CHUNK bytes and 0 < n <= CHUNK.
    let rc = unsafe {
        bpf_skb_load_bytes(
            cc.skb as *const c_void,
            at,
            s.buf.as_mut_ptr() as *mut c_void,
            n,
        )
    };
    if rc != 0 {
        cc.err = 1;
        return 1;
    }
    // SAFETY: `mask_cb` is a static callback; it only touches per-CPU maps.
    let rc = unsafe { bpf_loop(n, mask_cb as *mut c_void, core::ptr::null_mut(), 0) };
    if rc < 0 {
        cc.err = 1;
        return 1;
    }
    if s.changed != 0 {
        // SAFETY: as for the load.
        let rc = unsafe { bpf_skb_store_bytes(cc.skb, at, s.buf.as_ptr() as *const c_void, n, 0) };
        if rc != 0 {
            cc.err = 1;
            return 1;
        }
        s.total_changed += s.changed;
    }
    s.off = off + n;
    0
}

/// One chunk of a rule with byte ranges and no HTTP parsing: the ranges' parts of it are
/// filled in bulk. Past the scan window the fallback applies. Returns 1 to stop.
extern "C" fn range_cb(_i: u64, cc: *mut c_void) -> i64 {
    // SAFETY: `cc` is the `ChunkCtx` `try_mask` passed to `bpf_loop`.
    let cc = unsafe { &mut *(cc as *mut ChunkCtx) };
    let Some(sp) = MASK_SCRATCH.get_ptr_mut(0) else {
        cc.err = 1;
        return 1;
    };
    // SAFETY: per-CPU value, only this program on this CPU touches it.
    let s = unsafe { &mut *sp };
    let off = s.off;
    if off >= cc.plen {
        return 1;
    }
    if off >= cc.limit {
        s.fell_back = 1;
        if s.rule.fallback == FALLBACK_MASK {
            s.all = 1;
        }
        return 1;
    }
    let mut n = cc.plen - off;
    if n > CHUNK as u32 {
        n = CHUNK as u32;
    }
    if n > cc.limit - off {
        n = cc.limit - off;
    }
    if n == 0 {
        return 1;
    }
    fill_ranges(cc, s, off, bound::<{ CHUNK as u64 }>(n))
}

/// One chunk of the bulk fill (the "mask" fallback) from `s.off` to the end of the payload.
/// Returns 1 to stop.
extern "C" fn fill_cb(_i: u64, cc: *mut c_void) -> i64 {
    // SAFETY: `cc` is the `ChunkCtx` `try_mask` passed to `bpf_loop`.
    let cc = unsafe { &mut *(cc as *mut ChunkCtx) };
    let Some(sp) = MASK_SCRATCH.get_ptr_mut(0) else {
        cc.err = 1;
        return 1;
    };
    // SAFETY: per-CPU value, only this program on this CPU touches it.
    let s = unsafe { &mut *sp };
    let off = s.off;
    if off >= cc.plen {
        return 1;
    }
    let rem = cc.plen - off;
    if s.csum_deferred != 0 {
        let n = if rem > MASK_FILL_MAP_LEN as u32 {
            MASK_FILL_MAP_LEN as u32
        } else {
            rem
        };
        return store_fill(cc, s, off, bound::<{ MASK_FILL_MAP_LEN as u64 }>(n));
    }
    let n = if rem > CHUNK as u32 {
        CHUNK as u32
    } else {
        rem
    };
    bulk_fill(cc, s, off, bound::<{ CHUNK as u64 }>(n))
}

/// Replace `n` payload bytes at `off` by the fill byte in bulk: unless the kernel completes
/// the checksum later (`s.csum_deferred`), load them (their old sum is needed for the
/// checksum) and sum them with `bpf_csum_diff` (512 bytes per call, its limit); then store
/// the agent's pre-filled `MASK_FILL` buffer over them. The "mask" fallback for a flow that
/// cannot be parsed (e.g. not HTTP): a few helper calls per 2 KiB instead of a callback per
/// byte. Working values live in the scratch map: the callback's stack is shared with the
/// program's (512 bytes for the chain).
#[inline(always)]
fn bulk_fill(cc: &mut ChunkCtx, s: &mut Scratch, off: u32, n: u32) -> i64 {
    s.base = off;
    s.len = n;
    if s.csum_deferred == 0 && sum_old(cc, s) != 0 {
        return 1;
    }
    store_fill(cc, s, off, bound::<{ CHUNK as u64 }>(n))
}

/// The agent's pre-filled `MASK_FILL` buffer, if it holds `fill` (a buffer not yet written
/// for this fill byte would send bytes unmasked: the caller drops the clone instead).
#[inline(always)]
fn fill_buffer(fill: u8) -> Option<&'static [u8; MASK_FILL_MAP_LEN]> {
    let buf = MASK_FILL.get(0)?;
    (buf[0] == fill && buf[MASK_FILL_MAP_LEN - 1] == fill).then_some(buf)
}

/// Store `n` fill bytes over the payload at `off` from the agent's pre-filled `MASK_FILL`
/// buffer (no checksum work: [`bulk_fill`] did that, or the kernel does it later).
#[inline(always)]
fn store_fill(cc: &mut ChunkCtx, s: &mut Scratch, off: u32, n: u32) -> i64 {
    let Some(fill) = fill_buffer(s.fill) else {
        cc.err = 1;
        return 1;
    };
    let n = bound::<{ MASK_FILL_MAP_LEN as u64 }>(n);
    s.base = off;
    // SAFETY: `fill` is a MASK_FILL_MAP_LEN-byte map value and 0 < n <= MASK_FILL_MAP_LEN.
    let rc = unsafe {
        bpf_skb_store_bytes(
            cc.skb,
            cc.payload_off + s.base,
            fill.as_ptr() as *const c_void,
            n,
            0,
        )
    };
    if rc != 0 {
        cc.err = 1;
        return 1;
    }
    s.total_changed += n;
    s.off = s.base + n;
    0
}

/// The checksum side of [`bulk_fill`]: load the `s.len` bytes at `s.base` and account for
/// their replacement by the fill byte in `s.csum`. Returns 1 (and sets `cc.err`) on failure.
#[inline(always)]
fn sum_old(cc: &mut ChunkCtx, s: &mut Scratch) -> i64 {
    let n = bound::<{ CHUNK as u64 }>(s.len);
    // SAFETY: `buf` holds CHUNK + 8 bytes and 0 < n <= CHUNK.
    let rc = unsafe {
        bpf_skb_load_bytes(
            cc.skb as *const c_void,
            cc.payload_off + s.base,
            s.buf.as_mut_ptr() as *mut c_void,
            n,
        )
    };
    if rc != 0 {
        cc.err = 1;
        return 1;
    }
    // Zero padding to a multiple of 4 (the helper's unit) adds nothing to the sum.
    // SAFETY: n <= CHUNK and `buf` has 8 bytes beyond CHUNK.
    unsafe { core::ptr::write_bytes(s.buf.as_mut_ptr().add(n as usize), 0, 3) };
    s.sum = 0;
    csum_part(cc, s, 0);
    csum_part(cc, s, 1);
    csum_part(cc, s, 2);
    csum_part(cc, s, 3);
    if cc.err != 0 {
        return 1;
    }
    s.csum.replace_run(s.base, s.len, s.sum, s.fill);
    0
}

/// A rule with byte ranges and no HTTP parsing: fill each range's part of the chunk
/// `[off, off + n)` in bulk (no per-byte work).
#[inline(always)]
fn fill_ranges(cc: &mut ChunkCtx, s: &mut Scratch, off: u32, n: u32) -> i64 {
    s.chunk_start = off;
    s.chunk_end = off + n;
    let mut k = 0;
    while k < MAX_RANGES {
        if k >= s.rule.n_ranges as usize {
            break;
        }
        let [ro, rl] = s.rule.ranges[k];
        let lo = ro as u32;
        let hi = lo + rl as u32;
        let a = if lo > s.chunk_start {
            lo
        } else {
            s.chunk_start
        };
        let b = if hi < s.chunk_end { hi } else { s.chunk_end };
        if a < b && b - a <= CHUNK as u32 {
            let len = bound::<{ CHUNK as u64 }>(b - a);
            if bulk_fill(cc, s, a, len) != 0 {
                return 1;
            }
        }
        k += 1;
    }
    s.off = s.chunk_end;
    0
}

/// Add part `k` (bytes `512k..512(k+1)`) of the chunk in `s.buf` to `s.sum`.
#[inline(always)]
fn csum_part(cc: &mut ChunkCtx, s: &mut Scratch, k: u32) {
    let n4 = (s.len + 3) & !3;
    let a = k * 512;
    if a >= n4 {
        return;
    }
    let rem = n4 - a;
    let sz = bound::<512>(if rem > 512 { 512 } else { rem });
    // SAFETY: `a + sz <= n4 <= CHUNK`: inside `buf`; the helper only reads.
    let rc = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            s.buf.as_mut_ptr().add(a as usize) as *mut u32,
            sz,
            s.sum,
        )
    };
    if rc < 0 {
        cc.err = 1;
    } else {
        s.sum = rc as u32;
    }
}

/// Per byte of the chunk in `MASK_SCRATCH`: decide, replace, keep the checksum delta.
extern "C" fn mask_cb(i: u64, _ctx: *mut c_void) -> i64 {
    let Some(sp) = MASK_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: per-CPU value; `spec` was set for this segment before the loop.
    let Some(spec) = MASK_SPEC.get(unsafe { (*sp).spec } as u32) else {
        return 1;
    };
    // SAFETY: per-CPU value, only this program on this CPU touches it.
    let s = unsafe { &mut *sp };
    let idx = (i as usize) & (CHUNK - 1);
    if idx as u32 >= s.len {
        return 1;
    }
    let b = s.buf[idx];
    let pos = s.base + idx as u32;
    let mut m = s.all != 0 || (s.rule.flags & MASK_RANGES != 0 && in_ranges(&s.rule, pos));
    let mut out = spec.fill;
    if s.http != 0 {
        if s.st.st != ST_BROKEN {
            if let Some(t) = mask_http(&mut s.st, spec, b) {
                m = true;
                out = t;
            }
        }
        if s.st.st == ST_BROKEN {
            s.fell_back = 1;
            if s.rule.fallback == FALLBACK_MASK {
                m = true;
            }
        }
    }
    if m && b != out {
        s.csum.replace(pos, b, out);
        s.buf[idx] = out;
        s.changed += 1;
    }
    0
}

/// TC egress on the shadow interface: masks the clones the ingress program sends there,
/// length-preserving, fixing the L4 checksum. Packets without the clone mark pass untouched.
/// A clone that cannot be masked is dropped, never sent as it is.
#[classifier]
pub fn shadow_mask(ctx: TcContext) -> i32 {
    let skb = ctx.as_ptr() as *mut __sk_buff;
    let verdict = mask_verdict(ctx);
    let pseudo = verdict == PSEUDONYMISED;
    if pseudo && remember_pseudonym(&TcContext::new(skb)).is_err() {
        count(ctr::PSEUDO_FAILED);
        return TC_ACT_SHOT;
    }
    if verdict == TC_ACT_SHOT {
        return TC_ACT_SHOT;
    }
    lat_request(&TcContext::new(skb), pseudo);
    TC_ACT_UNSPEC
}

/// `mask_verdict`'s "next" for a clone it pseudonymised (not a TC action code).
const PSEUDONYMISED: i32 = 0x5053;

#[inline(always)]
fn mask_verdict(ctx: TcContext) -> i32 {
    // SAFETY: reading `mark` of the program's own `__sk_buff`.
    let mark = unsafe { (*(ctx.as_ptr() as *const __sk_buff)).mark };
    if mark & CLONE_MARK_MASK != CLONE_MARK {
        return TC_ACT_UNSPEC;
    }
    let rule = mark & 0xff;
    if let Some(mr) = MASK_RULES.get(rule) {
        if mr.flags != 0 {
            match try_mask(&ctx, rule, mr) {
                Ok(true) => {}
                Ok(false) => {
                    count(ctr::FALLBACK_DROPPED);
                    return TC_ACT_SHOT;
                }
                Err(()) => {
                    count(ctr::MASK_FAILED);
                    return TC_ACT_SHOT;
                }
            }
        }
    }
    // After masking: the masking state is keyed by the real 5-tuple.
    if let Some(pc) = PSEUDO_CFG.get(0) {
        if pc.enabled != 0 {
            if pseudonymise(&ctx, pc).is_err() {
                count(ctr::PSEUDO_FAILED);
                return TC_ACT_SHOT;
            }
            count(ctr::PSEUDONYMISED);
            return PSEUDONYMISED;
        }
    }
    TC_ACT_UNSPEC
}

/// The live `MASK_SPEC` slot (0 or 1).
#[inline(always)]
fn mask_slot() -> u32 {
    MIRROR_CFG
        .get(0)
        .map_or(0, |c| u32::from(c.flags & FLAG_MASK_SLOT != 0))
}

/// Replace the clone's source address by its keyed pseudonym, fixing the IPv4 header
/// checksum and the TCP/UDP checksum (whose pseudo-header holds the address). Fragments and
/// other protocols are refused (`Err`: the clone is dropped, never sent with the real
/// address). The real source address is left in `LAT_SCRATCH.real` for
/// [`remember_pseudonym`].
#[inline(always)]
fn pseudonymise(ctx: &TcContext, pc: &PseudoConfig) -> Result<(), ()> {
    let flow = parse_flow(&Skb(ctx)).ok_or(())?;
    let tcp = flow.proto == IPPROTO_TCP;
    if !flow.has_ports || !(tcp || flow.proto == IPPROTO_UDP) {
        return Err(());
    }
    let l3 = flow.l3_off as u32;
    let l4 = flow.l4_off as u32;
    let (csum_off, flags) = if tcp {
        (l4 + 16, BPF_F_PSEUDO_HDR as u64 | 4)
    } else {
        (
            l4 + 6,
            BPF_F_PSEUDO_HDR as u64 | BPF_F_MARK_MANGLED_0 as u64 | 4,
        )
    };
    let skb = ctx.as_ptr() as *mut __sk_buff;
    let sp = LAT_SCRATCH.get_ptr_mut(0).ok_or(())?;
    // SAFETY: per-CPU value; TC programs do not nest on a CPU while using it.
    unsafe { (*sp).real = flow.src };
    if flow.family == 4 {
        let old: [u8; 4] = ctx.load(l3 as usize + 12).map_err(|_| ())?;
        let new = pseudonym_v4(&pc.key, old, pc.v4_prefix, pc.v4_len);

        let (o, n) = (
            u32::from_ne_bytes(old) as u64,
            u32::from_ne_bytes(new) as u64,
        );
        // SAFETY: checksum field offsets inside the packet; 4-byte replacements.
        unsafe {
            if bpf_l4_csum_replace(skb, csum_off, o, n, flags) != 0 {
                return Err(());
            }
            if bpf_l3_csum_replace(skb, l3 + 10, o, n, 4) != 0 {
                return Err(());
            }
        }
        ctx.store(l3 as usize + 12, &new, 0).map_err(|_| ())?;
    } else {
        let old: [u8; 16] = ctx.load(l3 as usize + 8).map_err(|_| ())?;
        let new = pseudonym_v6(&pc.key, old, pc.v6_prefix, pc.v6_len);

        let mut i = 0;
        while i < 4 {
            let o =
                u32::from_ne_bytes([old[i * 4], old[i * 4 + 1], old[i * 4 + 2], old[i * 4 + 3]]);
            let n =
                u32::from_ne_bytes([new[i * 4], new[i * 4 + 1], new[i * 4 + 2], new[i * 4 + 3]]);
            // SAFETY: as above.
            if unsafe { bpf_l4_csum_replace(skb, csum_off, o as u64, n as u64, flags) } != 0 {
                return Err(());
            }
            i += 1;
        }
        ctx.store(l3 as usize + 8, &new, 0).map_err(|_| ())?;
    }
    Ok(())
}

/// After [`pseudonymise`], for a tracked session's SYN: `PSEUDO_BACK[the session as the
/// shadow sees it] = the real client` (from `LAT_SCRATCH.real`), before the SYN goes out.
/// A session the shadow could not be matched back to would never establish there, so a
/// failed write drops the SYN (`Err`). Other packets: nothing. Its own step after the
/// verdict, so its locals share the frame's slots with `lat_request`'s rather than add to
/// the masking's (whose frame plus a `bpf_loop` callback's must fit in 512 bytes).
// Borrowed: the key and value stay in the scratch map rather than be copied to the stack.
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(always)]
fn remember_pseudonym(ctx: &TcContext) -> Result<(), ()> {
    let cfg = MIRROR_CFG.get(0).ok_or(())?;
    if cfg.flags & FLAG_TCP_TRACK == 0 {
        return Ok(());
    }
    let flow = parse_flow(&Skb(ctx)).ok_or(())?;
    if flow.proto != IPPROTO_TCP || flow.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) != TCP_FLAG_SYN {
        return Ok(());
    }
    let sp = LAT_SCRATCH.get_ptr_mut(0).ok_or(())?;
    // SAFETY: per-CPU value; TC programs do not nest on a CPU while using it, and
    // `lat_request` (its other user here) runs after this returns.
    let s = unsafe { &mut *sp };
    s.key = FlowKey::of(&flow);
    PSEUDO_BACK.insert(&s.key, &s.real, 0).map_err(|_| ())
}

/// The bulk fill's preparation (one pull, the checksum probe) pays off from this many bytes.
const BULK_PREP_MIN: u32 = 256;
/// The diff [`probe_csum`] applies.
const CSUM_PROBE: u32 = 1;

/// Whether the kernel completes the clone's L4 checksum later (`CHECKSUM_PARTIAL`, as for
/// segments from a local socket or a container's veth): the checksum helper then ignores a
/// payload diff, so none need be computed. BPF cannot read `ip_summed`, so the helper is
/// asked: `CSUM_PROBE` is applied as a diff and the field stays as it was exactly when the
/// checksum is partial (or a UDP checksum is 0, "none", which needs no fix either).
/// Otherwise the field now holds `CSUM_PROBE` more, which the final fix takes out.
#[inline(always)]
fn probe_csum(ctx: &TcContext, csum_off: u32, flags: u64) -> Result<bool, ()> {
    let before: [u8; 2] = ctx.load(csum_off as usize).map_err(|_| ())?;
    // SAFETY: checksum field offset inside the packet; `diff` mode (size flags 0).
    let rc = unsafe {
        bpf_l4_csum_replace(
            ctx.as_ptr() as *mut __sk_buff,
            csum_off,
            0,
            CSUM_PROBE as u64,
            flags,
        )
    };
    if rc != 0 {
        return Err(());
    }
    let after: [u8; 2] = ctx.load(csum_off as usize).map_err(|_| ())?;
    Ok(before == after)
}

/// Longest range (after clipping to the payload) [`fast_ranges`] fills.
const FAST_RANGE: u32 = 64;

/// The common case of a byte-range rule (no HTTP parsing), straight-line: every range,
/// clipped to the payload, at most `FAST_RANGE` bytes and the payload within the scan limit.
/// Per range one load, one `bpf_csum_diff` of the old bytes, one store of the fill; then one
/// checksum fix. The same bytes, checksum and counters as the general path (`bpf_loop` over
/// chunks), at a fraction of its per-clone cost (no callbacks, scratch set-up or flow key).
/// `Ok(None)`: not applicable, nothing was touched; the general path takes the packet.
#[inline(always)]
fn fast_ranges(
    ctx: &TcContext,
    mr: &MaskRule,
    rule: u32,
    payload_off: u32,
    plen: u32,
    csum_off: u32,
    csum_flags: u64,
) -> Result<Option<bool>, ()> {
    let spec = MASK_SPEC.get(mask_slot()).ok_or(())?;
    if plen > spec.scan_limit.min(MAX_SCAN_LIMIT) {
        // Past the scan limit the rule's fallback applies: the general path decides.
        return Ok(None);
    }
    let clip = |k: usize| -> (u32, u32) {
        let [ro, rl] = mr.ranges[k];
        let lo = ro as u32;
        let hi = lo + rl as u32;
        (lo, if hi < plen { hi } else { plen })
    };
    let n = (mr.n_ranges as usize).min(MAX_RANGES);
    let mut k = 0;
    while k < n {
        let (lo, hi) = clip(k);
        if lo < hi && hi - lo > FAST_RANGE {
            return Ok(None);
        }
        k += 1;
    }
    let sp = MASK_SCRATCH.get_ptr_mut(0).ok_or(())?;
    // SAFETY: per-CPU value, only this program on this CPU touches it.
    let s = unsafe { &mut *sp };
    let skb = ctx.as_ptr() as *mut __sk_buff;
    let mut csum = CsumDelta::default();
    let mut changed = 0u32;
    k = 0;
    while k < n {
        let (lo, hi) = clip(k);
        if lo < hi {
            let len = bound::<{ FAST_RANGE as u64 }>(hi - lo);
            // SAFETY: `buf` holds CHUNK + 8 >= FAST_RANGE + 3 bytes; 0 < len <= FAST_RANGE.
            let rc = unsafe {
                bpf_skb_load_bytes(
                    skb as *const c_void,
                    payload_off + lo,
                    s.buf.as_mut_ptr() as *mut c_void,
                    len,
                )
            };
            if rc != 0 {
                return Err(());
            }
            // Zero padding to the helper's 4-byte unit adds nothing to the sum.
            // SAFETY: as above.
            unsafe { core::ptr::write_bytes(s.buf.as_mut_ptr().add(len as usize), 0, 3) };
            let len4 = bound::<{ FAST_RANGE as u64 }>((len + 3) & !3);
            // SAFETY: `len4 <= FAST_RANGE` bytes of `buf`, only read.
            let sum = unsafe {
                bpf_csum_diff(
                    core::ptr::null_mut(),
                    0,
                    s.buf.as_mut_ptr() as *mut u32,
                    len4,
                    0,
                )
            };
            if sum < 0 {
                return Err(());
            }
            csum.replace_run(lo, len, sum as u32, spec.fill);
            let fill = fill_buffer(spec.fill).ok_or(())?;
            // SAFETY: `fill` is a MASK_FILL_MAP_LEN-byte map value, len <= FAST_RANGE.
            let rc = unsafe {
                bpf_skb_store_bytes(
                    skb,
                    payload_off + lo,
                    fill.as_ptr() as *const c_void,
                    len,
                    0,
                )
            };
            if rc != 0 {
                return Err(());
            }
            changed += len;
        }
        k += 1;
    }
    if changed != 0 {
        // SAFETY: checksum field offset inside the packet; `diff` mode (size flags 0).
        let rc =
            unsafe { bpf_l4_csum_replace(skb, csum_off, 0, csum.kernel_diff() as u64, csum_flags) };
        if rc != 0 {
            return Err(());
        }
        count(ctr::MASKED);
        bump!(MIRROR_CTRS, ctr::MASKED_BYTES, changed as u64);
        bump!(MASK_RULE_CTRS, rule, 1);
    }
    Ok(Some(true))
}

/// Mask the clone in place. `Ok(false)`: the "drop" fallback applies.
// Map keys and values are passed by reference into the per-CPU scratch value on purpose:
// by value they would be copied to the stack, which the callbacks share (512 bytes).
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(always)]
fn try_mask(ctx: &TcContext, rule: u32, mr: &MaskRule) -> Result<bool, ()> {
    let flow = parse_flow(&Skb(ctx)).ok_or(())?;
    let is_tcp = flow.proto == IPPROTO_TCP;
    if !flow.has_ports || !(is_tcp || flow.proto == IPPROTO_UDP) {
        // Fragments and other protocols cannot be masked.
        count(ctr::UNPARSEABLE);
        return Ok(false);
    }
    let l4 = flow.l4_off as usize;
    // The IP length field, or the skb's when it is 0 (BIG TCP / jumbograms): a 0 read as
    // "no payload" would send the payload unmasked.
    let end = ip_end(ctx, &flow).ok_or(())?;
    let (payload_off, csum_off, csum_flags) = if is_tcp {
        let doff = ((Skb(ctx).load::<1>(l4 + 12).ok_or(())?[0] >> 4) as usize) * 4;
        (l4 + doff, l4 + 16, 0u64)
    } else {
        (l4 + 8, l4 + 6, BPF_F_MARK_MANGLED_0 as u64)
    };
    let plen = end.saturating_sub(payload_off) as u32;
    if plen == 0 && (!is_tcp || flow.tcp_flags & (TCP_FLAG_SYN | TCP_FIN | TCP_RST) == 0) {
        // Nothing to mask and no state to create or free (a pure ACK): the flow's state is
        // not touched, so an ACK processed ahead of a data segment on another CPU cannot
        // break the sequence tracking.
        return Ok(true);
    }

    if mr.flags & (MASK_HTTP | MASK_RANGES) == MASK_RANGES {
        if let Some(done) = fast_ranges(
            ctx,
            mr,
            rule,
            payload_off as u32,
            plen,
            csum_off as u32,
            csum_flags,
        )? {
            return Ok(done);
        }
    }

    let sp = MASK_SCRATCH.get_ptr_mut(0).ok_or(())?;
    // SAFETY: per-CPU value, only this program on this CPU touches it (the callback runs
    // synchronously inside `bpf_loop` below).
    let s = unsafe { &mut *sp };
    s.rule = *mr;
    s.csum = CsumDelta::default();
    s.total_changed = 0;
    s.all = 0;
    let slot = mask_slot();
    s.spec = slot as u8;
    s.fill = MASK_SPEC.get(slot).ok_or(())?.fill;
    s.fell_back = 0;
    s.http = 0;
    s.csum_deferred = 0;
    s.probed = 0;
    s.st.reset();

    let http = mr.flags & MASK_HTTP != 0;
    s.key = FlowKey::of(&flow);
    s.fin_rst = u8::from(is_tcp && flow.tcp_flags & 0x05 != 0);
    s.keep_state = 0;
    if http && !is_tcp {
        // An HTTP rule on a non-TCP packet: unknown protocol, fallback.
        s.st.st = ST_BROKEN;
        s.http = 1;
    } else if http {
        let seq = u32::from_be_bytes(Skb(ctx).load::<4>(l4 + 4).ok_or(())?);
        s.http = 1;
        if flow.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN {
            s.st.reset();
            s.st.next_seq = seq.wrapping_add(1);
            s.st.flags = F_SEQ_VALID;
            let _ = MASK_FLOWS.insert(&s.key, &s.st, 0);
            s.keep_state = 1;
        } else {
            // SAFETY: the value is copied out at once; LRU entries may be evicted later.
            match unsafe { MASK_FLOWS.get(&s.key) } {
                Some(st) => {
                    s.st = *st;
                    let fit = if mr.flags & MASK_RANGES == 0 && s.fin_rst == 0 {
                        body_segment(&mut s.st, seq, plen)
                    } else {
                        BodyFit::No
                    };
                    if fit == BodyFit::Inside {
                        // Body bytes only, skipped by length: O(1), and the flow's state is
                        // left as it is (its body end does not move).
                        count(ctr::MASK_BODY_PASSED);
                        return Ok(true);
                    }
                    match seq_check(&s.st, seq, plen) {
                        SeqVerdict::InOrder => s.keep_state = 1,
                        SeqVerdict::Old => s.st.st = ST_BROKEN, // this segment only
                        SeqVerdict::Lost => {
                            if s.st.st != ST_BROKEN && plen > 0 {
                                count(ctr::MASK_SEQ_LOST);
                            }
                            s.st.st = ST_BROKEN;
                            s.keep_state = 1;
                        }
                    }
                }
                None => {
                    // Joined mid-stream (or evicted): cannot be followed from here on.
                    if plen > 0 {
                        count(ctr::MASK_UNTRACKED);
                    }
                    s.st.st = ST_BROKEN;
                    s.st.flags = F_SEQ_VALID;
                    s.keep_state = u8::from(plen > 0);
                }
            }
        }
    }

    let limit = {
        let spec = MASK_SPEC.get(s.spec as u32).ok_or(())?;
        spec.scan_limit.min(MAX_SCAN_LIMIT)
    };
    s.off = 0;
    let mut cc = ChunkCtx {
        skb: ctx.as_ptr() as *mut __sk_buff,
        payload_off: payload_off as u32,
        plen,
        limit,
        err: 0,
    };
    // Parse (HTTP, with or without ranges) or fill the ranges of each chunk; then, when the
    // "mask" fallback took over, fill the rest in bulk. Separate loops: each callback's
    // stack adds to the program's, so none nests another's work.
    let cb = if s.http != 0 {
        chunk_cb as *mut c_void
    } else {
        range_cb as *mut c_void
    };
    // SAFETY: the callbacks are static; `cc` outlives the calls.
    let rc = unsafe { bpf_loop(MAX_CHUNKS, cb, &mut cc as *mut ChunkCtx as *mut c_void, 0) };
    if rc < 0 || cc.err != 0 {
        return Err(());
    }
    if s.all != 0 && s.off < plen {
        if plen - s.off >= BULK_PREP_MIN {
            // One pull makes the segment linear and the clone's own, one allocation and
            // copy, where each 2 KiB store would otherwise pull the next piece (and grow
            // the head again). Not fatal: each store still makes its bytes writable.
            let _ = ctx.pull_data(end as u32);
            if probe_csum(ctx, csum_off as u32, csum_flags)? {
                s.csum_deferred = 1;
            } else {
                s.probed = 1;
            }
        }
        // SAFETY: as above.
        let rc = unsafe {
            bpf_loop(
                MAX_CHUNKS,
                fill_cb as *mut c_void,
                &mut cc as *mut ChunkCtx as *mut c_void,
                0,
            )
        };
        if rc < 0 || cc.err != 0 {
            return Err(());
        }
    }
    let off = s.off;
    if off < plen && s.all != 0 {
        // The fill did not reach the end (beyond MAX_CHUNKS): never sent partly unmasked.
        return Err(());
    }
    if off < plen && s.all == 0 && !(s.http != 0 && s.st.st == ST_BODY_SKIP) {
        // Bytes left unscanned (drop fallback past the window, or beyond MAX_CHUNKS).
        s.fell_back = 1;
        if s.http != 0 {
            s.st.st = ST_BROKEN;
        }
    }
    if s.keep_state != 0 {
        if s.fin_rst != 0 {
            let _ = MASK_FLOWS.remove(&s.key);
        } else {
            if s.st.st != ST_BROKEN {
                s.st.next_seq = s.st.next_seq.wrapping_add(plen);
            }
            let _ = MASK_FLOWS.insert(&s.key, &s.st, 0);
        }
    } else if s.fin_rst != 0 {
        let _ = MASK_FLOWS.remove(&s.key);
    }
    if s.fell_back != 0 {
        count(ctr::UNPARSEABLE);
        if mr.fallback != FALLBACK_MASK {
            return Ok(false);
        }
    }
    if s.total_changed != 0 || s.probed != 0 {
        let mut diff = s.csum.kernel_diff() as u64;
        if s.probed != 0 {
            // Take the probe's 1 out again: + 0xffff_fffe is - 1 in ones' complement.
            diff += !CSUM_PROBE as u64;
            diff = (diff & 0xffff_ffff) + (diff >> 32);
        }
        // SAFETY: checksum field offset inside the packet; `diff` mode (size flags 0).
        let rc = unsafe {
            bpf_l4_csum_replace(
                ctx.as_ptr() as *mut __sk_buff,
                csum_off as u32,
                0,
                diff,
                csum_flags,
            )
        };
        if rc != 0 {
            return Err(());
        }
    }
    if s.total_changed != 0 {
        if s.csum_deferred != 0 {
            count(ctr::MASK_CSUM_DEFERRED);
        }
        count(ctr::MASKED);
        bump!(MIRROR_CTRS, ctr::MASKED_BYTES, s.total_changed as u64);
        bump!(MASK_RULE_CTRS, rule, 1);
    }
    Ok(true)
}

// Multi-buffer aware (`xdp.frags`), so it accepts frames larger than a page (the parser reads
// past the first buffer through bpf_xdp_load_bytes, which handles fragments, and the byte
// count is the whole frame's). Note: on veth, attaching any XDP
// program turns off GSO on the peer, which `cargo xtask bench mirror` measured as a large
// TCP throughput loss; the agent therefore leaves XDP off unless configured.
#[xdp(frags)]
pub fn shadow_load(ctx: XdpContext) -> u32 {
    try_load(&ctx);
    xdp_action::XDP_PASS
}

#[inline(always)]
fn try_load(ctx: &XdpContext) {
    let Some(cfg) = MIRROR_CFG.get(0) else {
        return;
    };
    let Some(flow) = parse_flow(&Xdp(ctx)) else {
        return;
    };
    let flow = &unknown_to_verifier(flow, cfg.opaque_zero);
    let Some(rule) = find_rule(cfg, flow) else {
        return;
    };
    if let Some(load) = RULE_LOAD.get_ptr_mut(rule) {
        // The whole frame: `data_end - data` is only its first buffer when it has fragments.
        // SAFETY: the helper only reads the context it is given.
        let len = unsafe { bpf_xdp_get_buff_len(ctx.as_ptr() as *mut _) };
        let syn = flow.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN;
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe {
            (*load).packets += 1;
            (*load).bytes += len;
            (*load).syns += syn as u64;
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
