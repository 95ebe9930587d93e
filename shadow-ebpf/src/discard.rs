//! Output Discard: nothing a shadow replica sends reaches the world.
//!
//! * `shadow_discard` (TC ingress on the host end of a replica's veth): everything the
//!   replica transmits arrives here and is dropped, counted in packets and bytes.
//! * `shd_connect4/6`, `shd_sendmsg4/6` (cgroup sock_addr on each replica's cgroup2
//!   directory): TCP connects and UDP sends to any destination outside the allowlist are
//!   refused (EPERM), counted per destination in `REFUSED`. This catches traffic that would
//!   leave through any interface, not only the veth.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::TC_ACT_SHOT,
    macros::{cgroup_sock_addr, classifier, map},
    maps::{Array, LruHashMap, PerCpuArray},
    programs::{SockAddrContext, TcContext},
};
use shadow_common::{
    discard::{ctr, AllowRule, Dest, DiscardConfig, FLAG_ALLOW_LOOPBACK, MAX_ALLOW},
    mirror::{IPPROTO_TCP, IPPROTO_UDP},
};
use shadow_ebpf::bump;

#[map]
static DISCARD_CFG: Array<DiscardConfig> = Array::with_max_entries(1, 0);
#[map]
static ALLOW_RULES: Array<AllowRule> = Array::with_max_entries(MAX_ALLOW, 0);
#[map]
static DISCARD_CTRS: PerCpuArray<u64> = PerCpuArray::with_max_entries(ctr::N, 0);
#[map]
static REFUSED: LruHashMap<Dest, u64> = LruHashMap::with_max_entries(1024, 0);

const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
/// Verdicts of cgroup sock_addr programs.
const REFUSE: i32 = 0;
const ALLOW: i32 = 1;

#[classifier]
pub fn shadow_discard(ctx: TcContext) -> i32 {
    bump!(DISCARD_CTRS, ctr::TX_DROPPED, 1);
    bump!(DISCARD_CTRS, ctr::TX_DROPPED_BYTES, ctx.len() as u64);
    TC_ACT_SHOT
}

/// Read the destination the socket call names. Each `u32` field of the context is read on
/// its own: the verifier accepts only 4-byte (or narrower) loads of `user_ip6`.
#[inline(always)]
fn dest(ctx: &SockAddrContext, v6: bool) -> Dest {
    let sa = ctx.sock_addr;
    let mut d = Dest::default();
    // SAFETY: `sa` is the kernel's bpf_sock_addr context; reads of these fields are allowed.
    unsafe {
        let proto = core::ptr::read_volatile(&(*sa).type_);
        d.proto = match proto {
            SOCK_STREAM => IPPROTO_TCP,
            SOCK_DGRAM => IPPROTO_UDP,
            _ => 0,
        };
        // user_port holds the port in network byte order in its low 16 bits.
        let port = core::ptr::read_volatile(&(*sa).user_port);
        d.port = u16::from_be(port as u16);
        if v6 {
            d.family = 6;
            let w: *const [u32; 4] = &(*sa).user_ip6;
            let w = w as *const u32;
            let mut i = 0;
            while i < 4 {
                let word = core::ptr::read_volatile(w.add(i)).to_ne_bytes();
                d.addr[i * 4..i * 4 + 4].copy_from_slice(&word);
                i += 1;
            }
        } else {
            d.family = 4;
            let word = core::ptr::read_volatile(&(*sa).user_ip4).to_ne_bytes();
            d.addr[..4].copy_from_slice(&word);
        }
    }
    d
}

#[inline(always)]
fn is_allowed(d: &Dest) -> bool {
    let Some(cfg) = DISCARD_CFG.get(0) else {
        return false;
    };
    if cfg.flags & FLAG_ALLOW_LOOPBACK != 0 && d.is_loopback() {
        return true;
    }
    let n = if cfg.n_allow < MAX_ALLOW {
        cfg.n_allow
    } else {
        MAX_ALLOW
    };
    let mut i = 0;
    while i < MAX_ALLOW {
        if i >= n {
            return false;
        }
        if let Some(r) = ALLOW_RULES.get(i) {
            if r.matches(d) {
                return true;
            }
        }
        i += 1;
    }
    false
}

#[inline(always)]
fn verdict(ctx: &SockAddrContext, v6: bool, refused_ctr: u32, allowed_ctr: u32) -> i32 {
    let d = dest(ctx, v6);
    if is_allowed(&d) {
        bump!(DISCARD_CTRS, allowed_ctr, 1);
        return ALLOW;
    }
    bump!(DISCARD_CTRS, refused_ctr, 1);
    match REFUSED.get_ptr_mut(d) {
        // SAFETY: a live map value; a lost increment under a race only undercounts.
        Some(n) => unsafe { *n += 1 },
        None => {
            let _ = REFUSED.insert(d, 1, 0);
        }
    }
    REFUSE
}

#[cgroup_sock_addr(connect4)]
pub fn shd_connect4(ctx: SockAddrContext) -> i32 {
    verdict(&ctx, false, ctr::CONNECT_REFUSED, ctr::CONNECT_ALLOWED)
}

#[cgroup_sock_addr(connect6)]
pub fn shd_connect6(ctx: SockAddrContext) -> i32 {
    verdict(&ctx, true, ctr::CONNECT_REFUSED, ctr::CONNECT_ALLOWED)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn shd_sendmsg4(ctx: SockAddrContext) -> i32 {
    verdict(&ctx, false, ctr::SENDMSG_REFUSED, ctr::SENDMSG_ALLOWED)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn shd_sendmsg6(ctx: SockAddrContext) -> i32 {
    verdict(&ctx, true, ctr::SENDMSG_REFUSED, ctr::SENDMSG_ALLOWED)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
