//! The mirror's shared types and its pure datapath logic: packet parsing and rule matching.
//!
//! The eBPF programs call exactly these functions through [`PacketView`], implemented over
//! the TC and XDP contexts; the host tests implement it over a byte slice.

/// Maximum number of selection rules.
pub const MAX_RULES: u32 = 16;

/// Entries of the per-rule maps: two sets of `MAX_RULES` (`MirrorConfig::rule_base` says
/// which is live), so that the rules can change while the mirror runs. A clone carries its
/// rule's slot (set and rule), and is masked by the rule that selected it even when the
/// other set has become live meanwhile.
pub const RULE_SLOTS: u32 = 2 * MAX_RULES;

/// `MirrorConfig::flags`: the mirror clones matching packets.
pub const FLAG_ENABLED: u16 = 1;
/// `MirrorConfig::flags`: TCP sessions are tracked (`shadow::tcp`): only flows whose SYN was
/// cloned are mirrored, the shadow's ISN, TSval and resets are learned.
pub const FLAG_TCP_TRACK: u16 = 2;
/// `MirrorConfig::flags`: tracked sessions are translated (ACK, SACK, TSecr) for the shadow.
pub const FLAG_TCP_TRANSLATE: u16 = 4;
/// `MirrorConfig::flags`: time each mirrored request to the replica's reply
/// (`shadow_common::latency`).
pub const FLAG_LATENCY: u16 = 8;
/// `MirrorConfig::flags`: the live mask spec is slot 1 of `MASK_SPEC` (else slot 0); the
/// other is where a reload writes the next one.
pub const FLAG_MASK_SLOT: u16 = 16;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const ETH_HLEN: usize = 14;

/// Global mirror settings (one entry of `MIRROR_CFG`). The agent may rewrite it at any time
/// (sample rate, caps); the programs read it once per packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MirrorConfig {
    /// Interface the clones are redirected to (egress), in the primary interface's netns.
    pub shadow_ifindex: u32,
    /// Number of live entries of `MIRROR_RULES`, from `rule_base` on.
    pub n_rules: u32,
    /// Destination MAC written into each clone: the shadow end's address.
    pub shadow_mac: [u8; 6],
    /// `FLAG_*` bits.
    pub flags: u16,
    /// Flows mirrored per million (by 5-tuple hash); `SAMPLE_ALL` or more mirrors every flow.
    pub sample_ppm: u32,
    /// Seed of the flow hash (so which flows are sampled is not predictable from outside).
    pub hash_seed: u32,
    /// Token bucket cost of one clone in ns (1e9 / packets per second); 0: no packet cap.
    pub cap_pkt_ns: u64,
    /// Token bucket cost of one clone byte in ps (1e12 / bytes per second); 0: no byte cap.
    pub cap_byte_ps: u64,
    /// Burst tolerance of both buckets in ns (how far ahead of real time they may run).
    pub cap_burst_ns: u64,
    /// A tracked TCP session without a client segment for this long is forgotten (0: never;
    /// the LRU map bounds the state anyway).
    pub tcp_idle_ns: u64,
    /// Live entries at the start of `MIRROR_TARGETS` (the shadow group's replicas). 0: the
    /// clones go to `shadow_ifindex`/`shadow_mac` (one target, no flow table).
    pub n_targets: u32,
    /// The live rule set: its first slot in the per-rule maps, 0 or `MAX_RULES`.
    pub rule_base: u32,
    /// Always 0. The TC program XORs the parsed flow's fields with it: a no-op at run time,
    /// but a value read from a map is unknown to the verifier, so the fields the parser
    /// leaves as constants on each of its paths (family, offsets, ports present) stop
    /// keeping those paths apart, and what follows the parse is verified once instead of
    /// once per path (see `shadow_mirror`).
    pub opaque_zero: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<MirrorConfig>() == 72);

/// Most targets (shadow replicas) the mirror spreads flows over.
pub const MAX_TARGETS: u32 = 16;

/// One entry of `MIRROR_TARGETS`: where the clones of the flows assigned to it go.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MirrorTarget {
    /// Interface the clones are redirected to (egress), in the primary interface's netns.
    pub ifindex: u32,
    /// Changes whenever the slot gets a different interface: flows assigned under another
    /// generation are not moved to the new occupant.
    pub gen: u32,
    /// Destination MAC written into each clone.
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<MirrorTarget>() == 16);

/// Value of `MIRROR_FLOWS`: the target a flow was assigned to on its first clone.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowTarget {
    pub index: u32,
    /// `MirrorTarget::gen` of the slot at assignment.
    pub gen: u32,
}
const _: () = assert!(core::mem::size_of::<FlowTarget>() == 8);

/// `MirrorConfig::sample_ppm` meaning "every flow".
pub const SAMPLE_ALL: u32 = 1_000_000;

/// State of the global token buckets (one entry of `MIRROR_TB`): the virtual time up to
/// which each bucket's budget is spent ("theoretical arrival time", GCRA).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenBucket {
    pub pkt_tat_ns: u64,
    pub byte_tat_ns: u64,
}
const _: () = assert!(core::mem::size_of::<TokenBucket>() == 16);

/// One selection rule. A packet is mirrored when any live rule matches it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MirrorRule {
    /// Destination prefix; IPv4 addresses use the first 4 bytes.
    pub addr: [u8; 16],
    /// 4, 6, or 0 for either family (then `prefix_len` must be 0).
    pub family: u8,
    /// Prefix length in bits (0..=32 for IPv4, 0..=128 for IPv6).
    pub prefix_len: u8,
    /// `IPPROTO_TCP`, `IPPROTO_UDP`, or 0 for either.
    pub proto: u8,
    pub _pad: u8,
    /// Inclusive destination port range; `0..=65535` matches any (and port-less packets).
    pub port_lo: u16,
    pub port_hi: u16,
}
const _: () = assert!(core::mem::size_of::<MirrorRule>() == 24);

/// Packets and bytes seen by the XDP program for one rule, per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleLoad {
    pub packets: u64,
    pub bytes: u64,
    /// TCP SYNs without ACK: new connections.
    pub syns: u64,
}
const _: () = assert!(core::mem::size_of::<RuleLoad>() == 24);

crate::impl_pod!(
    MirrorConfig,
    MirrorRule,
    RuleLoad,
    TokenBucket,
    MirrorTarget,
    FlowTarget
);

/// Indices into `MIRROR_CTRS`. Every packet the TC program sees lands in exactly one of
/// `NOT_IP`, `NO_MATCH`, `DISABLED` or `MATCHED`; every matched one in `CLONED` or one of the
/// failure counters. The original packet passes in every case.
pub mod ctr {
    pub const SEEN: u32 = 0;
    pub const NOT_IP: u32 = 1;
    pub const NO_MATCH: u32 = 2;
    pub const DISABLED: u32 = 3;
    pub const MATCHED: u32 = 4;
    pub const CLONED: u32 = 5;
    pub const CLONE_FAILED: u32 = 6;
    pub const REWRITE_FAILED: u32 = 7;
    pub const CLONED_BYTES: u32 = 8;
    /// The original's MAC could not be restored after cloning (never expected; alarm).
    pub const RESTORE_FAILED: u32 = 9;
    /// Matched, but the flow's 5-tuple hash is outside the sample.
    pub const SAMPLED_OUT: u32 = 10;
    /// Matched and sampled, but the token bucket was empty: the clone was not made.
    pub const CAPPED: u32 = 11;
    /// Clones (egress program on the shadow interface) with at least one byte masked.
    pub const MASKED: u32 = 12;
    /// Bytes replaced by the fill byte.
    pub const MASKED_BYTES: u32 = 13;
    /// Clones whose payload (or part of it) could not be parsed: the rule's fallback applied.
    pub const UNPARSEABLE: u32 = 14;
    /// Clones dropped by the "drop" fallback.
    pub const FALLBACK_DROPPED: u32 = 15;
    /// Clones dropped because masking failed (a helper error): never sent unmasked.
    pub const MASK_FAILED: u32 = 16;
    /// TCP sessions tracked (client SYN cloned, state created).
    pub const TCP_SESSIONS: u32 = 17;
    /// Sessions whose shadow SYN-ACK was seen: translation active.
    pub const TCP_ESTABLISHED: u32 = 18;
    /// Tracked sessions the shadow reset (counted once per session; the RST is dropped).
    pub const TCP_SHADOW_RESETS: u32 = 19;
    /// RSTs from the shadow on flows without state.
    pub const TCP_SHADOW_RESETS_UNTRACKED: u32 = 20;
    /// Sessions forgotten after the idle timeout.
    pub const TCP_IDLE: u32 = 21;
    /// Client segments that had to wait (the shadow's ISN not known yet, earlier segments of
    /// the flow still waiting, or a closing segment ahead of the shadow): held in the hold
    /// loop, or dropped when the hold is off.
    pub const TCP_WAITING: u32 = 22;
    /// Client segments of flows whose SYN was never cloned (began before the mirror, or
    /// evicted): dropped.
    pub const TCP_NOT_TRACKED: u32 = 23;
    /// Client segments translated for the shadow.
    pub const TCP_TRANSLATED: u32 = 24;
    /// Sessions ended by the client (RST, or FIN exchange complete): state freed.
    pub const TCP_CLOSED: u32 = 25;
    /// Clones dropped because translating failed (helper error).
    pub const TCP_FAILED: u32 = 26;
    /// Clones not made because the flow's target (replica) is gone: flows are never moved
    /// to another replica.
    pub const TARGET_GONE: u32 = 27;
    /// Flows assigned to a target (first clone of a UDP flow, SYN of a TCP one).
    pub const FLOWS_ASSIGNED: u32 = 28;
    /// Clones of TCP segments lying wholly inside a request body the HTTP parser skips by
    /// length: passed on without per-byte work or a state update.
    pub const MASK_BODY_PASSED: u32 = 29;
    /// Segments of an HTTP-masked flow that left a gap or partly overlapped the parsed
    /// stream: the flow can no longer be followed (fallback from then on).
    pub const MASK_SEQ_LOST: u32 = 30;
    /// Data segments of HTTP-masked flows without parse state (joined mid-stream, or
    /// evicted from the LRU): fallback.
    pub const MASK_UNTRACKED: u32 = 31;
    /// Clones whose source address was replaced by its keyed pseudonym.
    pub const PSEUDONYMISED: u32 = 32;
    /// Clones dropped because their source could not be pseudonymised (fragments, other
    /// protocols, helper errors): never sent with the real address.
    pub const PSEUDO_FAILED: u32 = 33;
    /// Passes of held TCP segments through the hold loop that sent them round again.
    pub const TCP_HOLD_LOOPS: u32 = 34;
    /// Held TCP segments released to the shadow once its state allowed.
    pub const TCP_HOLD_RELEASED: u32 = 35;
    /// Held TCP segments that waited the longest hold: dropped (session never established
    /// in the shadow) or released with a clamped ACK (closing, the shadow never caught up).
    pub const TCP_HOLD_EXPIRED: u32 = 36;
    /// Client SYNs sent to the shadow again because it had not answered (its accept queue
    /// was full, or its SYN was lost).
    pub const TCP_SYN_RETRIES: u32 = 37;
    /// Clones filled whole in bulk (the "mask" fallback) whose L4 checksum the kernel
    /// completes later (`CHECKSUM_PARTIAL`, as for traffic from a local socket or a
    /// container's veth): their old payload was neither read nor summed.
    pub const MASK_CSUM_DEFERRED: u32 = 38;
    pub const N: u32 = 39;
    /// Names used in the agent's output and metrics, by index.
    pub const NAMES: [&str; N as usize] = [
        "seen",
        "not_ip",
        "no_match",
        "disabled",
        "matched",
        "cloned",
        "clone_failed",
        "rewrite_failed",
        "cloned_bytes",
        "restore_failed",
        "sampled_out",
        "capped",
        "masked",
        "masked_bytes",
        "unparseable",
        "fallback_dropped",
        "mask_failed",
        "tcp_sessions",
        "tcp_established",
        "tcp_shadow_resets",
        "tcp_shadow_resets_untracked",
        "tcp_idle",
        "tcp_waiting",
        "tcp_not_tracked",
        "tcp_translated",
        "tcp_closed",
        "tcp_failed",
        "target_gone",
        "flows_assigned",
        "mask_body_passed",
        "mask_seq_lost",
        "mask_untracked",
        "pseudonymised",
        "pseudo_failed",
        "tcp_hold_loops",
        "tcp_hold_released",
        "tcp_hold_expired",
        "tcp_syn_retries",
        "mask_csum_deferred",
    ];
}

/// Bounded reads from a packet, as the datapath does them.
pub trait PacketView {
    /// Copy `N` bytes at `off`, or `None` when the packet is shorter.
    fn load<const N: usize>(&self, off: usize) -> Option<[u8; N]>;
}

impl PacketView for [u8] {
    fn load<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        let end = off.checked_add(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(self.get(off..end)?);
        Some(out)
    }
}

/// What the datapath knows of a packet after parsing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    /// 4 or 6.
    pub family: u8,
    /// Transport protocol (IPv6: after extension headers).
    pub proto: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// 0 when the packet carries no TCP/UDP header (other protocols, non-first fragments).
    pub sport: u16,
    pub dport: u16,
    /// True when the ports are known.
    pub has_ports: bool,
    /// TCP flags byte, 0 when not TCP.
    pub tcp_flags: u8,
    /// Offset of the IP header.
    pub l3_off: u16,
    /// Offset of the transport header (when `has_ports`).
    pub l4_off: u16,
}

pub const TCP_FLAG_SYN: u8 = 0x02;
pub const TCP_FLAG_ACK: u8 = 0x10;

const IPV6_EXT_HOP: u8 = 0;
const IPV6_EXT_ROUTING: u8 = 43;
const IPV6_EXT_FRAGMENT: u8 = 44;
const IPV6_EXT_DSTOPTS: u8 = 60;
/// Extension headers walked at most; a longer chain is treated as carrying no ports.
const IPV6_MAX_EXT: usize = 4;

/// Parse an Ethernet frame: up to two VLAN tags, IPv4 (with options, fragments) or IPv6
/// (hop-by-hop, routing, destination-options and fragment headers), then TCP/UDP ports.
/// `None` for anything that is not IP or is truncated before the addresses.
#[inline(always)]
pub fn parse_flow<P: PacketView + ?Sized>(p: &P) -> Option<Flow> {
    let mut off = 12usize;
    let mut ethertype = u16::from_be_bytes(p.load::<2>(off)?);
    off += 2;
    // Up to two VLAN tags (802.1ad outer + 802.1Q inner).
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        ethertype = u16::from_be_bytes(p.load::<2>(off + 2)?);
        off += 4;
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            ethertype = u16::from_be_bytes(p.load::<2>(off + 2)?);
            off += 4;
        }
    }
    let mut flow = Flow {
        l3_off: off as u16,
        ..Flow::default()
    };
    let l4_off;
    if ethertype == ETH_P_IP {
        let h = p.load::<20>(off)?;
        if h[0] >> 4 != 4 {
            return None;
        }
        let ihl = ((h[0] & 0x0f) as usize) * 4;
        if ihl < 20 {
            return None;
        }
        flow.family = 4;
        flow.proto = h[9];
        flow.src[..4].copy_from_slice(&h[12..16]);
        flow.dst[..4].copy_from_slice(&h[16..20]);
        let frag_off = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
        if frag_off != 0 {
            return Some(flow);
        }
        l4_off = off + ihl;
    } else if ethertype == ETH_P_IPV6 {
        let h = p.load::<40>(off)?;
        if h[0] >> 4 != 6 {
            return None;
        }
        flow.family = 6;
        flow.src.copy_from_slice(&h[8..24]);
        flow.dst.copy_from_slice(&h[24..40]);
        let mut next = h[6];
        let mut cur = off + 40;
        let mut i = 0;
        while i < IPV6_MAX_EXT {
            match next {
                IPV6_EXT_HOP | IPV6_EXT_ROUTING | IPV6_EXT_DSTOPTS => {
                    let e = p.load::<2>(cur)?;
                    next = e[0];
                    cur += (e[1] as usize + 1) * 8;
                }
                IPV6_EXT_FRAGMENT => {
                    let e = p.load::<4>(cur)?;
                    next = e[0];
                    let frag_off = u16::from_be_bytes([e[2], e[3]]) >> 3;
                    cur += 8;
                    if frag_off != 0 {
                        flow.proto = next;
                        return Some(flow);
                    }
                }
                _ => break,
            }
            i += 1;
        }
        flow.proto = next;
        if i == IPV6_MAX_EXT {
            return Some(flow);
        }
        l4_off = cur;
    } else {
        return None;
    }
    if flow.proto == IPPROTO_TCP || flow.proto == IPPROTO_UDP {
        if let Some(ports) = p.load::<4>(l4_off) {
            flow.sport = u16::from_be_bytes([ports[0], ports[1]]);
            flow.dport = u16::from_be_bytes([ports[2], ports[3]]);
            flow.has_ports = true;
            flow.l4_off = l4_off as u16;
            if flow.proto == IPPROTO_TCP {
                if let Some(f) = p.load::<1>(l4_off + 13) {
                    flow.tcp_flags = f[0];
                }
            }
        }
    }
    Some(flow)
}

/// Whether the first `prefix_len` bits of `a` and `b` agree (a length above 128 compares
/// all 128). Two masked 64-bit compares and no loop: the verifier walks it in a few dozen
/// instructions, where a byte loop with an early exit per byte cost it hundreds per call,
/// and the mirror calls it for each of up to 16 rules per packet.
#[inline(always)]
pub fn prefix_eq(a: &[u8; 16], b: &[u8; 16], prefix_len: u8) -> bool {
    #[inline(always)]
    fn half(x: &[u8; 16], o: usize) -> u64 {
        u64::from_be_bytes([
            x[o],
            x[o + 1],
            x[o + 2],
            x[o + 3],
            x[o + 4],
            x[o + 5],
            x[o + 6],
            x[o + 7],
        ])
    }
    let p = prefix_len as u32;
    let m_hi = if p >= 64 {
        u64::MAX
    } else if p == 0 {
        0
    } else {
        u64::MAX << (64 - p)
    };
    let m_lo = if p >= 128 {
        u64::MAX
    } else if p <= 64 {
        0
    } else {
        u64::MAX << (128 - p)
    };
    ((half(a, 0) ^ half(b, 0)) & m_hi) | ((half(a, 8) ^ half(b, 8)) & m_lo) == 0
}

impl MirrorRule {
    /// Does this rule select `flow`?
    #[inline(always)]
    pub fn matches(&self, flow: &Flow) -> bool {
        if self.family != 0 && self.family != flow.family {
            return false;
        }
        if self.proto != 0 && self.proto != flow.proto {
            return false;
        }
        let any_port = self.port_lo == 0 && self.port_hi == u16::MAX;
        if !any_port && (!flow.has_ports || flow.dport < self.port_lo || flow.dport > self.port_hi)
        {
            return false;
        }
        self.family == 0 || prefix_eq(&self.addr, &flow.dst, self.prefix_len)
    }
}

/// Index of the first rule among `rules[..n]` that selects `flow`.
pub fn first_match(rules: &[MirrorRule], n: usize, flow: &Flow) -> Option<usize> {
    rules.iter().take(n).position(|r| r.matches(flow))
}

#[inline(always)]
fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// Hash of a flow's 5-tuple (addresses, ports, protocol) with `seed`. Every packet of a
/// connection in one direction hashes alike, so sampling by it keeps whole connections.
/// Non-first fragments carry no ports and hash as a different flow.
#[inline(always)]
pub fn flow_hash(flow: &Flow, seed: u32) -> u32 {
    let mut h = seed ^ 0x9e37_79b9;
    let mut i = 0;
    while i < 4 {
        let s = u32::from_le_bytes([
            flow.src[i * 4],
            flow.src[i * 4 + 1],
            flow.src[i * 4 + 2],
            flow.src[i * 4 + 3],
        ]);
        let d = u32::from_le_bytes([
            flow.dst[i * 4],
            flow.dst[i * 4 + 1],
            flow.dst[i * 4 + 2],
            flow.dst[i * 4 + 3],
        ]);
        h = fmix32(h ^ s).wrapping_add(d).rotate_left(13);
        i += 1;
    }
    let ports = ((flow.sport as u32) << 16) | flow.dport as u32;
    h = fmix32(h ^ ports);
    fmix32(h ^ ((flow.proto as u32) << 8 | flow.family as u32))
}

/// Whether a flow with hash `h` is in a sample of `ppm` flows per million.
#[inline(always)]
pub fn sampled(h: u32, ppm: u32) -> bool {
    ppm >= SAMPLE_ALL || ((h as u64 * SAMPLE_ALL as u64) >> 32) < ppm as u64
}

/// The target (of `n` >= 1) a new flow with hash `h` is assigned to: remixed so the choice
/// is independent of [`sampled`]'s (which uses the high bits of `h` itself).
#[inline(always)]
pub fn target_index(h: u32, n: u32) -> u32 {
    ((fmix32(h ^ 0x5bd1_e995) as u64 * n as u64) >> 32) as u32
}

/// One GCRA token bucket step without atomics: given the bucket's spent-up-to time `tat`,
/// the current time and the burst tolerance, returns `(base, admit)` where `base` is the
/// time the cost must be added to (`now` when the bucket had fully refilled) and `admit`
/// says whether the clone fits. The datapath writes `base` back only when it differs from
/// `tat` and then adds the cost atomically; concurrent CPUs can overshoot the cap by at most
/// one packet each.
#[inline(always)]
pub fn bucket_check(tat: u64, now: u64, burst_ns: u64) -> (u64, bool) {
    let base = if tat < now { now } else { tat };
    (base, base - now <= burst_ns)
}

/// Token bucket cost of a clone of `len` bytes for the byte cap, in ns.
#[inline(always)]
pub fn byte_cost_ns(len: u64, byte_ps: u64) -> u64 {
    // Both clamped so the product fits 64 bits (no 128-bit multiply on BPF): frames are
    // below 2^20 bytes and the agent never asks for more than 1e12 ps per byte.
    (len & 0xf_ffff) * (byte_ps & 0xff_ffff_ffff) / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth(ethertype: u16) -> [u8; 14] {
        let mut h = [0u8; 14];
        h[12..14].copy_from_slice(&ethertype.to_be_bytes());
        h
    }

    fn ipv4_tcp(dst: [u8; 4], dport: u16, flags: u8) -> [u8; 54] {
        let mut p = [0u8; 54];
        p[..14].copy_from_slice(&eth(ETH_P_IP));
        p[14] = 0x45;
        p[23] = IPPROTO_TCP;
        p[26..30].copy_from_slice(&[198, 18, 0, 1]);
        p[30..34].copy_from_slice(&dst);
        p[34..36].copy_from_slice(&40000u16.to_be_bytes());
        p[36..38].copy_from_slice(&dport.to_be_bytes());
        p[46] = 0x50;
        p[47] = flags;
        p
    }

    fn rule4(addr: [u8; 4], prefix_len: u8, proto: u8, lo: u16, hi: u16) -> MirrorRule {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&addr);
        MirrorRule {
            addr: a,
            family: 4,
            prefix_len,
            proto,
            port_lo: lo,
            port_hi: hi,
            ..MirrorRule::default()
        }
    }

    #[test]
    fn parses_ipv4_tcp() {
        let p = ipv4_tcp([198, 18, 0, 2], 80, TCP_FLAG_SYN);
        let f = parse_flow(&p[..]).unwrap();
        assert_eq!(f.family, 4);
        assert_eq!(f.proto, IPPROTO_TCP);
        assert_eq!(&f.dst[..4], &[198, 18, 0, 2]);
        assert_eq!((f.sport, f.dport), (40000, 80));
        assert!(f.has_ports);
        assert_eq!(f.tcp_flags, TCP_FLAG_SYN);
        assert_eq!((f.l3_off, f.l4_off), (14, 34));
    }

    #[test]
    fn parses_ipv4_with_options_and_vlans() {
        // Two VLAN tags, IHL 6 (one option word).
        let mut p = [0u8; 14 + 8 + 24 + 20];
        p[12..14].copy_from_slice(&ETH_P_8021AD.to_be_bytes());
        p[16..18].copy_from_slice(&ETH_P_8021Q.to_be_bytes());
        p[20..22].copy_from_slice(&ETH_P_IP.to_be_bytes());
        let ip = 22;
        p[ip] = 0x46;
        p[ip + 9] = IPPROTO_UDP;
        p[ip + 16..ip + 20].copy_from_slice(&[198, 18, 0, 2]);
        p[ip + 24..ip + 26].copy_from_slice(&53u16.to_be_bytes());
        p[ip + 26..ip + 28].copy_from_slice(&5353u16.to_be_bytes());
        let f = parse_flow(&p[..]).unwrap();
        assert_eq!(f.l3_off, 22);
        assert_eq!(f.l4_off, 46);
        assert_eq!((f.sport, f.dport), (53, 5353));
    }

    #[test]
    fn non_first_fragment_has_no_ports() {
        let mut p = ipv4_tcp([198, 18, 0, 2], 80, 0);
        p[20] = 0x00;
        p[21] = 0x10; // fragment offset 16 (x8 bytes)
        let f = parse_flow(&p[..]).unwrap();
        assert!(!f.has_ports);
        assert!(!rule4([198, 18, 0, 2], 32, IPPROTO_TCP, 80, 80).matches(&f));
        // A rule without a port condition still selects it, so the whole datagram is mirrored.
        assert!(rule4([198, 18, 0, 2], 32, IPPROTO_TCP, 0, u16::MAX).matches(&f));
    }

    #[test]
    fn parses_ipv6_with_extension_headers() {
        let mut p = [0u8; 14 + 40 + 8 + 8 + 20];
        p[..14].copy_from_slice(&eth(ETH_P_IPV6));
        p[14] = 0x60;
        p[14 + 6] = IPV6_EXT_HOP;
        p[14 + 24 + 15] = 2; // dst = ::2 (with the rest zero)
        p[14 + 24] = 0xfd;
        let e1 = 54;
        p[e1] = IPV6_EXT_DSTOPTS;
        p[e1 + 1] = 0;
        let e2 = 62;
        p[e2] = IPPROTO_TCP;
        p[e2 + 1] = 0;
        let l4 = 70;
        p[l4 + 2..l4 + 4].copy_from_slice(&8080u16.to_be_bytes());
        let f = parse_flow(&p[..]).unwrap();
        assert_eq!(f.family, 6);
        assert_eq!(f.proto, IPPROTO_TCP);
        assert_eq!(f.l4_off, 70);
        assert_eq!(f.dport, 8080);
        let mut addr = [0u8; 16];
        addr[0] = 0xfd;
        let r = MirrorRule {
            addr,
            family: 6,
            prefix_len: 8,
            proto: IPPROTO_TCP,
            port_lo: 8000,
            port_hi: 8100,
            ..MirrorRule::default()
        };
        assert!(r.matches(&f));
    }

    #[test]
    fn truncated_and_non_ip_frames_do_not_parse() {
        let p = ipv4_tcp([198, 18, 0, 2], 80, 0);
        assert_eq!(parse_flow(&p[..20]), None);
        assert_eq!(parse_flow(&p[..10]), None);
        let arp = eth(0x0806);
        assert_eq!(parse_flow(&arp[..]), None);
        // Truncated transport header: addresses known, ports not.
        let f = parse_flow(&p[..36]).unwrap();
        assert!(!f.has_ports);
    }

    #[test]
    fn prefix_eq_agrees_with_a_bit_by_bit_compare_at_every_length() {
        let bit = |x: &[u8; 16], i: usize| x[i / 8] >> (7 - i % 8) & 1;
        let mut a = [0u8; 16];
        for (i, v) in a.iter_mut().enumerate() {
            *v = (i as u8).wrapping_mul(37) ^ 0xa5;
        }
        // `b` differs from `a` in exactly one bit, at every position in turn (and not at all).
        for flip in (0..128).map(Some).chain([None]) {
            let mut b = a;
            if let Some(f) = flip {
                b[f / 8] ^= 0x80 >> (f % 8);
            }
            for len in 0..=255u8 {
                let n = (len as usize).min(128);
                let want = (0..n).all(|i| bit(&a, i) == bit(&b, i));
                assert_eq!(prefix_eq(&a, &b, len), want, "flip {flip:?}, /{len}");
            }
        }
    }

    #[test]
    fn cidr_prefix_boundaries() {
        let f = parse_flow(&ipv4_tcp([198, 18, 7, 200], 443, 0)[..]).unwrap();
        assert!(rule4([198, 18, 0, 0], 16, 0, 0, u16::MAX).matches(&f));
        assert!(rule4([198, 18, 7, 192], 26, 0, 0, u16::MAX).matches(&f));
        assert!(!rule4([198, 18, 7, 128], 26, 0, 0, u16::MAX).matches(&f));
        assert!(rule4([0, 0, 0, 0], 0, 0, 0, u16::MAX).matches(&f));
        assert!(!rule4([198, 18, 7, 201], 32, 0, 0, u16::MAX).matches(&f));
    }

    #[test]
    fn port_range_and_protocol() {
        let f = parse_flow(&ipv4_tcp([198, 18, 0, 2], 8080, 0)[..]).unwrap();
        assert!(rule4([198, 18, 0, 2], 32, IPPROTO_TCP, 8000, 8080).matches(&f));
        assert!(!rule4([198, 18, 0, 2], 32, IPPROTO_TCP, 8081, 9000).matches(&f));
        assert!(!rule4([198, 18, 0, 2], 32, IPPROTO_UDP, 0, u16::MAX).matches(&f));
        let rules = [
            rule4([198, 18, 0, 9], 32, 0, 0, u16::MAX),
            rule4([198, 18, 0, 2], 32, 0, 0, u16::MAX),
        ];
        assert_eq!(first_match(&rules, 2, &f), Some(1));
        assert_eq!(first_match(&rules, 1, &f), None);
    }

    #[test]
    fn flow_hash_is_per_five_tuple() {
        let syn = parse_flow(&ipv4_tcp([198, 18, 0, 2], 80, TCP_FLAG_SYN)[..]).unwrap();
        let data = parse_flow(&ipv4_tcp([198, 18, 0, 2], 80, TCP_FLAG_ACK)[..]).unwrap();
        assert_eq!(
            flow_hash(&syn, 7),
            flow_hash(&data, 7),
            "flags do not matter"
        );
        let mut other = syn;
        other.sport += 1;
        assert_ne!(flow_hash(&syn, 7), flow_hash(&other, 7));
        assert_ne!(flow_hash(&syn, 7), flow_hash(&syn, 8), "the seed matters");
    }

    #[test]
    fn targets_are_spread_evenly_and_independently_of_sampling() {
        let mut f = parse_flow(&ipv4_tcp([198, 18, 0, 2], 80, 0)[..]).unwrap();
        for n in 1..=MAX_TARGETS {
            let mut per = [0u32; MAX_TARGETS as usize];
            let mut sampled_per = [0u32; MAX_TARGETS as usize];
            for sport in 0..16_000u16 {
                f.sport = sport;
                let h = flow_hash(&f, 3);
                let t = target_index(h, n);
                assert!(t < n);
                per[t as usize] += 1;
                if sampled(h, 250_000) {
                    sampled_per[t as usize] += 1;
                }
            }
            let even = 16_000 / n;
            for t in 0..n as usize {
                assert!(
                    per[t] > even * 8 / 10 && per[t] < even * 12 / 10,
                    "n {n}: target {t} got {} of 16000",
                    per[t]
                );
                // A quarter sample still reaches every target about evenly.
                assert!(
                    sampled_per[t] > even / 4 * 6 / 10,
                    "n {n}: target {t} got {} sampled flows",
                    sampled_per[t]
                );
            }
        }
    }

    #[test]
    fn sampling_rate_is_close_to_the_asked_one() {
        let mut f = parse_flow(&ipv4_tcp([198, 18, 0, 2], 80, 0)[..]).unwrap();
        for (ppm, lo, hi) in [
            (0, 0, 0),
            (250_000, 2300, 2700),
            (SAMPLE_ALL, 10_000, 10_000),
        ] {
            let mut n = 0;
            for sport in 0..10_000u16 {
                f.sport = sport;
                n += sampled(flow_hash(&f, 1), ppm) as u32;
            }
            assert!((lo..=hi).contains(&n), "ppm {ppm}: {n} of 10000 flows");
        }
    }

    #[test]
    fn bucket_admits_at_the_rate_plus_burst() {
        // 1000 pps (1 ms per packet), 10 ms burst, 1000 back-to-back packets at t = 1 s.
        let (cost, burst, now) = (1_000_000u64, 10_000_000u64, 1_000_000_000u64);
        let mut tat = 0;
        let mut admitted = 0;
        for _ in 0..1000 {
            let (base, ok) = bucket_check(tat, now, burst);
            if ok {
                tat = base + cost;
                admitted += 1;
            }
        }
        assert_eq!(admitted, 11, "burst / cost + 1");
        // 5 ms later, 5 more fit.
        let mut later = 0;
        for _ in 0..100 {
            let (base, ok) = bucket_check(tat, now + 5_000_000, burst);
            if ok {
                tat = base + cost;
                later += 1;
            }
        }
        assert_eq!(later, 5);
        assert_eq!(byte_cost_ns(1500, 8_000), 12_000, "1500 B at 125 MB/s");
    }
}
