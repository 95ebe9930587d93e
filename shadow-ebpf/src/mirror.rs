//! Input Data Mirror datapath.
//!
//! * `shadow_mirror` (TC ingress on the primary's interface): parses each packet, matches it
//!   against the rules in `MIRROR_RULES`, and clones matches to the shadow interface with the
//!   clone's destination MAC rewritten to the shadow end. The original always continues,
//!   byte for byte: the MAC is rewritten only for the duration of `bpf_clone_redirect` and
//!   restored right after; every failure is counted and the packet passed (fail open).
//! * `shadow_load` (XDP on the same interface): per-rule packets, bytes and new TCP
//!   connections, the earliest load signal for the forecaster. Always `XDP_PASS`.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_UNSPEC},
    helpers::generated::bpf_xdp_load_bytes,
    macros::{classifier, map, xdp},
    maps::{Array, PerCpuArray},
    programs::{TcContext, XdpContext},
    EbpfContext as _,
};
use shadow_common::mirror::{
    ctr, parse_flow, Flow, MirrorConfig, MirrorRule, PacketView, RuleLoad, FLAG_ENABLED, MAX_RULES,
    TCP_FLAG_ACK, TCP_FLAG_SYN,
};
use shadow_ebpf::bump;

#[map]
static MIRROR_CFG: Array<MirrorConfig> = Array::with_max_entries(1, 0);
#[map]
static MIRROR_RULES: Array<MirrorRule> = Array::with_max_entries(MAX_RULES, 0);
#[map]
static MIRROR_CTRS: PerCpuArray<u64> = PerCpuArray::with_max_entries(ctr::N, 0);
#[map]
static RULE_LOAD: PerCpuArray<RuleLoad> = PerCpuArray::with_max_entries(MAX_RULES, 0);

struct Skb<'a>(&'a TcContext);

impl PacketView for Skb<'_> {
    #[inline(always)]
    fn load<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        self.0.load::<[u8; N]>(off).ok()
    }
}

struct Xdp<'a>(&'a XdpContext);

impl PacketView for Xdp<'_> {
    #[inline(always)]
    fn load<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
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

/// Index of the first live rule selecting `flow`.
#[inline(always)]
fn find_rule(cfg: &MirrorConfig, flow: &Flow) -> Option<u32> {
    let n = if cfg.n_rules < MAX_RULES {
        cfg.n_rules
    } else {
        MAX_RULES
    };
    let mut i = 0;
    while i < MAX_RULES {
        if i >= n {
            return None;
        }
        if let Some(rule) = MIRROR_RULES.get(i) {
            if rule.matches(flow) {
                return Some(i);
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
    if find_rule(cfg, &flow).is_none() {
        return ctr::NO_MATCH;
    }
    count(ctr::MATCHED);
    let Ok(orig_dst) = ctx.load::<[u8; 6]>(0) else {
        return ctr::REWRITE_FAILED;
    };
    if ctx.store(0, &cfg.shadow_mac, 0).is_err() {
        return ctr::REWRITE_FAILED;
    }
    let cloned = ctx.clone_redirect(cfg.shadow_ifindex, 0);
    if ctx.store(0, &orig_dst, 0).is_err() {
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

#[xdp]
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
    let Some(rule) = find_rule(cfg, &flow) else {
        return;
    };
    if let Some(load) = RULE_LOAD.get_ptr_mut(rule) {
        let syn = flow.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN;
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe {
            (*load).packets += 1;
            (*load).bytes += (ctx.data_end() - ctx.data()) as u64;
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
