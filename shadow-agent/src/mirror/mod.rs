//! Input Data Mirror: loads `shadow-mirror`, attaches it to the primary's interface, writes
//! the selection rules and reads the counters.
//!
//! The TC program is attached through TCX where the kernel has it (>= 6.6) and through a
//! clsact qdisc otherwise. TCX links belong to this process: if the agent dies, the kernel
//! detaches the mirror and the primary's traffic flows exactly as without Shadow.

pub mod latency;
pub mod rule;

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{
        tc::{self, NlOptions, SchedClassifierLinkId, TcAttachOptions},
        xdp::XdpLinkId,
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    util::KernelVersion,
    Ebpf,
};
use shadow_common::{
    maps::{
        MAP_MASK_FILL, MAP_MASK_RULES, MAP_MASK_RULE_CTRS, MAP_MASK_SPEC, MAP_MIRROR_CFG,
        MAP_MIRROR_CTRS, MAP_MIRROR_RULES, MAP_MIRROR_TARGETS, MAP_PSEUDO_CFG, MAP_RULE_LOAD,
        MAP_TARGET_FLOWS, MAP_TCP_FLOWS, MAP_TCP_HOLD, PROG_MIRROR_HOLD, PROG_MIRROR_ISN,
        PROG_MIRROR_LEARN, PROG_MIRROR_MASK, PROG_MIRROR_TC, PROG_MIRROR_TCP, PROG_MIRROR_XDP,
    },
    mask::FlowKey,
    mask::{
        MaskRule, MaskSpec, DEFAULT_HEADERS, DEFAULT_SCAN_LIMIT, FALLBACK_DROP, FALLBACK_MASK,
        MASK_FILL_MAP_LEN, MASK_HTTP, MASK_RANGES, MAX_RANGES,
    },
    mirror::{
        ctr, MirrorConfig, MirrorRule, MirrorTarget, RuleLoad, FLAG_ENABLED, FLAG_MASK_SLOT,
        FLAG_TCP_TRACK, FLAG_TCP_TRANSLATE, MAX_RULES, MAX_TARGETS, RULE_SLOTS, SAMPLE_ALL,
    },
    pseudo::{PrfKey, PseudoConfig},
    tcp::{TcpFlow, TcpHoldConfig},
};

pub use rule::{Cidr, Ports, Proto, Rule, RuleError};

use crate::{
    ebpf::{self, format_program_error, LoadError},
    sys::{link, netns::NetNs},
};

/// What to mirror, from where, to where.
#[derive(Clone, Debug)]
pub struct MirrorSpec {
    /// The primary's interface (with `address`: found from it, at attach and every
    /// [`Mirror::follow`]; the name given here is replaced).
    pub interface: String,
    /// The primary's address: the interface is the one traffic to it leaves through
    /// ([`link::towards`]); `None`: `interface` by name.
    pub address: Option<std::net::IpAddr>,
    /// Which way the primary's traffic crosses `interface`.
    pub direction: Direction,
    /// The interface clones are sent out of (the host end of the shadow's veth).
    pub shadow_interface: String,
    /// The MAC address of the shadow's end, written as the clones' destination.
    pub shadow_mac: [u8; 6],
    pub rules: Vec<Rule>,
    /// Also attach the XDP load counters.
    pub xdp: bool,
    /// Sampling, rate caps (and masking); `MirrorOptions::default()` mirrors every selected
    /// packet, uncapped.
    pub options: MirrorOptions,
}

/// Which way the primary's traffic crosses the mirror's interface (`mirror.direction`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// It arrives on it: the host's NIC, a VM's tap, the primary's own interface in its
    /// namespace. `shadow_mirror` on its ingress, `shadow_isn` on its egress.
    #[default]
    Ingress,
    /// It leaves through it towards the primary: the host end of a pod's or a container's
    /// veth (or a bridge port). `shadow_mirror` on its egress, `shadow_isn` on its ingress;
    /// no XDP (it sees only what the interface receives).
    Egress,
}

impl Direction {
    /// The hooks of `shadow_mirror` and of `shadow_isn`.
    fn hooks(self) -> (TcAttachType, TcAttachType) {
        match self {
            Direction::Ingress => (TcAttachType::Ingress, TcAttachType::Egress),
            Direction::Egress => (TcAttachType::Egress, TcAttachType::Ingress),
        }
    }
}

/// Flow sampling and the clone rate cap.
#[derive(Clone, Debug, PartialEq)]
pub struct MirrorOptions {
    /// Fraction of flows mirrored, 0.0..=1.0, chosen by 5-tuple hash. Default 1.0.
    pub sample_rate: f64,
    /// Cap on clones per second; 0 = none. Default 0.
    pub cap_pps: u64,
    /// Cap on cloned bytes per second (whole frames); 0 = none. Default 0.
    pub cap_bytes_per_sec: u64,
    /// Burst the caps tolerate, in milliseconds of the capped rate. Default 100.
    pub cap_burst_ms: u64,
    /// Flow hash seed; 0 picks a random one at attach time.
    pub hash_seed: u32,
    /// What masking looks for (header and parameter names, fill byte, scan window).
    pub mask: MaskOptions,
    /// Per-rule masking, by index into `MirrorSpec::rules`; a missing entry masks nothing.
    pub rule_masks: Vec<RuleMask>,
    /// TCP sessions in the shadow (sequence translation). Default `Off`: raw clones.
    pub tcp: TcpSessions,
    /// A tracked TCP session without a client segment for this long is forgotten.
    pub tcp_idle: std::time::Duration,
    /// Longest time a client segment that cannot go to the shadow yet is held in the hold
    /// loop (before the shadow's SYN-ACK is known; behind earlier held segments; a closing
    /// segment ahead of the shadow). Zero: no loop, such segments are dropped (closing ones
    /// go at once with a clamped ACK). Default 2 s. Only with `TcpSessions::Translate`.
    pub tcp_hold: std::time::Duration,
    /// While the shadow has not answered a session's SYN (e.g. its accept queue was full),
    /// the SYN is sent to it again this often, for as long as `tcp_hold`. Zero: never.
    /// Default 20 ms.
    pub tcp_syn_retry: std::time::Duration,
    /// Replace each clone's source address by a keyed pseudonym; `None`: off (default).
    pub pseudonymise: Option<Pseudonymise>,
}

/// Source-address pseudonymisation of the clones (`mirror.pseudonymise`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pseudonymise {
    /// The per-deployment secret (SipHash-2-4 key).
    pub key: [u8; 16],
    /// IPv4 pseudonyms are drawn inside this prefix (length <= 30).
    pub v4: (std::net::Ipv4Addr, u8),
    /// IPv6 pseudonyms are drawn inside this prefix (length <= 126).
    pub v6: (std::net::Ipv6Addr, u8),
}

impl Pseudonymise {
    pub fn to_kernel(&self) -> PseudoConfig {
        PseudoConfig {
            key: PrfKey::from_bytes(self.key),
            v6_prefix: self.v6.0.octets(),
            v4_prefix: self.v4.0.octets(),
            v4_len: self.v4.1,
            v6_len: self.v6.1,
            enabled: 1,
            _pad: 0,
        }
    }
}

/// Pace of the hold loop (bytes per second through its token bucket): bounds the CPU the loop
/// can use however many segments wait in it (`bench tcp`, new-connection mode, measured
/// ~18k passes/s); a lone small held segment makes a pass in ~30 µs. (250 kB/s was tried:
/// with tens of segments waiting, passes became too slow for SYN retries to land in time.)
pub const HOLD_RATE: u32 = 2_000_000;
/// Burst of the hold loop's token bucket (bytes; larger GSO packets are segmented by it).
const HOLD_BURST: u32 = 65_536;
/// Bytes the hold loop queues at most.
const HOLD_QUEUE: u32 = 16 << 20;

/// What the mirror does for TCP flows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TcpSessions {
    /// Clone every selected segment as it is (the shadow resets sessions it did not open).
    #[default]
    Off,
    /// Track sessions from their SYN, learn the primary's and the shadow's ISNs, translate
    /// every clone's ACK, SACK and TSecr so the shadow's own TCP session runs; clones of
    /// flows that began before the mirror (no SYN seen) are dropped.
    Translate,
    /// Track and count as `Translate` does, but send clones untranslated (diagnostics: shows
    /// what the translation saves — the shadow resets every session).
    TrackOnly,
}

/// Names masked by every rule with HTTP masking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaskOptions {
    /// HTTP header names whose values are masked (case-insensitive).
    pub headers: Vec<String>,
    /// Query-string and form parameter names whose values are masked.
    pub params: Vec<String>,
    /// The byte a masked value becomes.
    pub fill: u8,
    /// Payload bytes scanned per segment at most (1..=65536).
    pub scan_bytes: u32,
    /// With a key, header and parameter values become keyed same-length tokens instead of
    /// the fill byte (`mirror.mask.replace = "token"`); byte ranges and the "mask" fallback
    /// still use the fill byte.
    pub token_key: Option<[u8; 16]>,
}

impl Default for MaskOptions {
    fn default() -> Self {
        MaskOptions {
            headers: DEFAULT_HEADERS.iter().map(|s| s.to_string()).collect(),
            params: DEFAULT_PARAMS.iter().map(|s| s.to_string()).collect(),
            fill: b'*',
            scan_bytes: DEFAULT_SCAN_LIMIT,
            token_key: None,
        }
    }
}

/// Parameter names masked by default.
pub const DEFAULT_PARAMS: [&str; 3] = ["password", "token", "session"];

/// What to do with bytes of a masked rule's flow that cannot be parsed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fallback {
    /// Replace them with the fill byte (the clone keeps its length and sequence space).
    #[default]
    Mask,
    /// Do not send that clone.
    Drop,
}

/// Masking for one rule.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleMask {
    /// Parse the flow as HTTP/1.x requests and mask the listed headers and parameters.
    pub http: bool,
    /// `(offset, length)` byte ranges of each segment's or datagram's payload.
    pub ranges: Vec<(u16, u16)>,
    pub fallback: Fallback,
}

impl RuleMask {
    fn to_kernel(&self) -> Result<MaskRule, MirrorError> {
        if self.ranges.len() > MAX_RANGES {
            return Err(MirrorError::TooManyRanges {
                n: self.ranges.len(),
                max: MAX_RANGES,
            });
        }
        let mut r = MaskRule {
            flags: if self.http { MASK_HTTP } else { 0 }
                | if self.ranges.is_empty() {
                    0
                } else {
                    MASK_RANGES
                },
            fallback: match self.fallback {
                Fallback::Mask => FALLBACK_MASK,
                Fallback::Drop => FALLBACK_DROP,
            },
            n_ranges: self.ranges.len() as u8,
            ..MaskRule::default()
        };
        for (d, &(off, len)) in r.ranges.iter_mut().zip(&self.ranges) {
            *d = [off, len];
        }
        Ok(r)
    }
}

impl Default for MirrorOptions {
    fn default() -> Self {
        MirrorOptions {
            sample_rate: 1.0,
            cap_pps: 0,
            cap_bytes_per_sec: 0,
            cap_burst_ms: 100,
            hash_seed: 0,
            mask: MaskOptions::default(),
            rule_masks: Vec::new(),
            tcp: TcpSessions::Off,
            tcp_idle: std::time::Duration::from_secs(300),
            pseudonymise: None,
            tcp_hold: std::time::Duration::from_secs(2),
            tcp_syn_retry: std::time::Duration::from_millis(20),
        }
    }
}

/// `sample_rate` as flows per million.
pub fn sample_ppm(rate: f64) -> u32 {
    if rate.is_nan() || rate <= 0.0 {
        0
    } else if rate >= 1.0 {
        SAMPLE_ALL
    } else {
        (rate * SAMPLE_ALL as f64).round() as u32
    }
}

impl MirrorOptions {
    /// Write the sampling and cap fields of `cfg`.
    fn apply(&self, cfg: &mut MirrorConfig) {
        cfg.sample_ppm = sample_ppm(self.sample_rate);
        // 0 (no cap) stays 0; otherwise at least 1 so a cap is never "none" by rounding.
        cfg.cap_pkt_ns = 1_000_000_000u64
            .checked_div(self.cap_pps)
            .map_or(0, |v| v.max(1));
        cfg.cap_byte_ps = 1_000_000_000_000u64
            .checked_div(self.cap_bytes_per_sec)
            .map_or(0, |v| v.max(1));
        cfg.cap_burst_ns = self.cap_burst_ms.saturating_mul(1_000_000);
        cfg.tcp_idle_ns = u64::try_from(self.tcp_idle.as_nanos()).unwrap_or(u64::MAX);
        cfg.flags &= !(FLAG_TCP_TRACK | FLAG_TCP_TRANSLATE);
        cfg.flags |= match self.tcp {
            TcpSessions::Off => 0,
            TcpSessions::Translate => FLAG_TCP_TRACK | FLAG_TCP_TRANSLATE,
            TcpSessions::TrackOnly => FLAG_TCP_TRACK,
        };
    }
}

/// How the TC programs are attached: TCX links (kernels >= 6.6) or filters under the
/// clsact qdisc (older kernels).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TcMode {
    Tcx,
    Clsact,
}

/// Environment variable that overrides [`TcMode::detect`]: `clsact` or `tcx`.
pub const TC_MODE_ENV: &str = "SHADOW_TC_MODE";

impl TcMode {
    /// TCX where the kernel has it (6.6 and later), clsact filters otherwise.
    /// `SHADOW_TC_MODE=clsact` (or `tcx`) overrides the choice: the older kernels' path can
    /// be run (and is tested) on a new kernel, or TCX left to other tools.
    pub fn detect() -> TcMode {
        match std::env::var(TC_MODE_ENV).as_deref() {
            Ok("clsact") => return TcMode::Clsact,
            Ok("tcx") => return TcMode::Tcx,
            Ok(other) => tracing::warn!(
                value = other,
                "{TC_MODE_ENV} is not \"clsact\" or \"tcx\"; ignored"
            ),
            Err(_) => {}
        }
        if KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0)) {
            TcMode::Tcx
        } else {
            TcMode::Clsact
        }
    }

    /// How to attach a TC program to `interface`: in TCX, appended to the hook's chain or
    /// put `first`; under clsact, as the filter of `priority` (lower runs first; 0 lets the
    /// kernel choose), with the qdisc added when the interface has none.
    pub fn options(self, interface: &str, first: bool, priority: u16) -> TcAttachOptions {
        match self {
            TcMode::Tcx => TcAttachOptions::TcxOrder(if first {
                LinkOrder::first()
            } else {
                LinkOrder::default()
            }),
            TcMode::Clsact => {
                match tc::qdisc_add_clsact(interface) {
                    Ok(()) => {
                        if let Ok(mut added) = ADDED_CLSACT.lock() {
                            added.insert(interface.to_owned());
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "clsact qdisc not added (may already exist)")
                    }
                }
                TcAttachOptions::Netlink(NlOptions {
                    priority,
                    ..NlOptions::default()
                })
            }
        }
    }
}

/// Interfaces this process gave a clsact qdisc (they had none): taken off again at exit by
/// [`remove_added_clsact`] once our filters are gone. A qdisc that was there before is
/// never removed.
static ADDED_CLSACT: std::sync::Mutex<std::collections::BTreeSet<String>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Removes the clsact qdiscs this process added, where no filter is left on them (call it
/// after the programs are detached: the mirror and the shadow group dropped). One holding
/// another tool's filters stays; an interface gone since is skipped. Returns the interfaces
/// whose qdisc was removed.
pub fn remove_added_clsact() -> Vec<String> {
    let added = match ADDED_CLSACT.lock() {
        Ok(mut a) => std::mem::take(&mut *a),
        Err(_) => return Vec::new(),
    };
    let mut removed = Vec::new();
    for ifname in added {
        match link::remove_clsact_if_empty(&ifname, None) {
            Ok(link::ClsactRemoval::Removed) => {
                tracing::info!(interface = %ifname, "removed the clsact qdisc the agent added");
                removed.push(ifname);
            }
            Ok(link::ClsactRemoval::InUse { filters }) => tracing::info!(
                interface = %ifname,
                filters,
                "left the clsact qdisc the agent added: other filters use it now"
            ),
            Ok(link::ClsactRemoval::Absent) | Err(link::LinkError::NotFound { .. }) => {}
            Err(e) => {
                tracing::warn!(interface = %ifname, error = %e, "could not remove the clsact qdisc the agent added")
            }
        }
    }
    removed
}

/// clsact priorities on a shadow interface: the hooks' order TCX gets from `first`.
/// `shadow_tcp` before `shadow_mask` on egress; `shadow_learn` before the replica's
/// `shadow_discard` on ingress.
const PRIO_FIRST: u16 = 1;
const PRIO_MASK: u16 = 2;
/// The replica's `shadow_discard` (after `shadow_learn`).
pub const PRIO_DISCARD: u16 = 10;

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Kernel(#[from] crate::ebpf::MissingHelpers),
    #[error("mirror.primary_address {address}: no interface found for it: {reason}")]
    Unresolved {
        address: std::net::IpAddr,
        reason: link::NotTowards,
    },
    #[error("XDP sees only what {interface:?} receives, and the mirror's direction is egress")]
    XdpEgress { interface: String },
    #[error("interface {interface:?} ({role}) not found")]
    NoInterface {
        interface: String,
        role: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("{n} rules given; the mirror holds at most {max}")]
    TooManyRules { n: usize, max: u32 },
    #[error("attaching {program} to {interface:?}: {detail}")]
    Attach {
        program: &'static str,
        interface: String,
        detail: String,
    },
    #[error("BPF_PROG_TEST_RUN of {program}: {detail}")]
    TestRun {
        program: &'static str,
        detail: String,
    },
    #[error("{n} byte ranges in one rule; at most {max}")]
    TooManyRanges { n: usize, max: usize },
    #[error("mask specification: {0:?}")]
    MaskSpec(shadow_common::mask::SpecError),
    #[error("sample rate {rate} is outside 0.0..=1.0")]
    SampleRate { rate: f64 },
    #[error("{n} mirror targets given; between 1 and {max}")]
    Targets { n: usize, max: u32 },
    #[error("mirror target {interface:?} listed twice")]
    DuplicateTarget { interface: String },
    #[error("entering the mirror's network namespace")]
    Netns(#[source] crate::sys::netns::NetnsError),
    #[error("TCP hold loop ({interface:?}): {what}")]
    HoldLoop {
        what: &'static str,
        interface: String,
        #[source]
        source: Box<link::LinkError>,
    },
    #[error("writing map {map}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// Counters of the TC program, summed over CPUs, by `ctr::NAMES`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    pub seen: u64,
    pub not_ip: u64,
    pub no_match: u64,
    pub disabled: u64,
    pub matched: u64,
    pub cloned: u64,
    pub clone_failed: u64,
    pub rewrite_failed: u64,
    pub cloned_bytes: u64,
    pub restore_failed: u64,
    pub sampled_out: u64,
    pub capped: u64,
    pub masked: u64,
    pub masked_bytes: u64,
    pub unparseable: u64,
    pub fallback_dropped: u64,
    pub mask_failed: u64,
    pub tcp_sessions: u64,
    pub tcp_established: u64,
    pub tcp_shadow_resets: u64,
    pub tcp_shadow_resets_untracked: u64,
    pub tcp_idle: u64,
    pub tcp_waiting: u64,
    pub tcp_not_tracked: u64,
    pub tcp_translated: u64,
    pub tcp_closed: u64,
    pub tcp_failed: u64,
    pub target_gone: u64,
    pub flows_assigned: u64,
    pub mask_body_passed: u64,
    pub mask_seq_lost: u64,
    pub mask_untracked: u64,
    pub pseudonymised: u64,
    pub pseudo_failed: u64,
    pub tcp_hold_loops: u64,
    pub tcp_hold_released: u64,
    pub tcp_hold_expired: u64,
    pub tcp_syn_retries: u64,
    pub mask_csum_deferred: u64,
}

/// The TCP session counters (issue 4's names), from [`Mirror::tcp_counters`].
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TcpCounters {
    /// Sessions tracked (client SYN cloned).
    pub sessions: u64,
    /// Sessions established in the shadow (its SYN-ACK seen, translation active).
    pub established: u64,
    /// Tracked sessions the shadow reset (once per session; the RSTs were dropped).
    pub shadow_resets: u64,
    /// RSTs from the shadow on flows without state (e.g. began before the mirror).
    pub shadow_resets_untracked: u64,
    /// Sessions forgotten after the idle timeout.
    pub idle: u64,
    /// Sessions pushed out of the full LRU map (estimated: tracked − closed − idle − live).
    pub evicted: u64,
    /// Sessions ended by the client (RST or completed FIN exchange), state freed.
    pub closed: u64,
    /// Sessions with state now.
    pub live: u64,
    /// Client segments that had to wait: held in the hold loop (or, without the loop,
    /// dropped while the shadow's ISN was unknown).
    pub segments_waiting: u64,
    /// Held segments released to the shadow once it could take them.
    pub segments_released: u64,
    /// Held segments that waited the longest hold (dropped if the session never got
    /// established in the shadow, else released with a clamped ACK).
    pub segments_expired: u64,
    /// Extra passes through the hold loop (a measure of how long segments waited).
    pub hold_passes: u64,
    /// SYNs sent to the shadow again because it had not answered.
    pub syn_retries: u64,
    /// Client segments of untracked flows (no SYN seen), dropped.
    pub segments_not_tracked: u64,
    /// Client segments translated.
    pub segments_translated: u64,
    /// Clones dropped because translation failed.
    pub segments_failed: u64,
}

impl TcpCounters {
    /// The counts since `earlier` (saturating); `live` and `evicted` as they are now.
    pub fn since(&self, earlier: &TcpCounters) -> TcpCounters {
        let d = |a: u64, b: u64| a.saturating_sub(b);
        TcpCounters {
            sessions: d(self.sessions, earlier.sessions),
            established: d(self.established, earlier.established),
            shadow_resets: d(self.shadow_resets, earlier.shadow_resets),
            shadow_resets_untracked: d(
                self.shadow_resets_untracked,
                earlier.shadow_resets_untracked,
            ),
            idle: d(self.idle, earlier.idle),
            evicted: self.evicted,
            closed: d(self.closed, earlier.closed),
            live: self.live,
            segments_waiting: d(self.segments_waiting, earlier.segments_waiting),
            segments_released: d(self.segments_released, earlier.segments_released),
            segments_expired: d(self.segments_expired, earlier.segments_expired),
            hold_passes: d(self.hold_passes, earlier.hold_passes),
            syn_retries: d(self.syn_retries, earlier.syn_retries),
            segments_not_tracked: d(self.segments_not_tracked, earlier.segments_not_tracked),
            segments_translated: d(self.segments_translated, earlier.segments_translated),
            segments_failed: d(self.segments_failed, earlier.segments_failed),
        }
    }
}

impl Counters {
    fn from_slots(v: &[u64; ctr::N as usize]) -> Self {
        Counters {
            seen: v[ctr::SEEN as usize],
            not_ip: v[ctr::NOT_IP as usize],
            no_match: v[ctr::NO_MATCH as usize],
            disabled: v[ctr::DISABLED as usize],
            matched: v[ctr::MATCHED as usize],
            cloned: v[ctr::CLONED as usize],
            clone_failed: v[ctr::CLONE_FAILED as usize],
            rewrite_failed: v[ctr::REWRITE_FAILED as usize],
            cloned_bytes: v[ctr::CLONED_BYTES as usize],
            restore_failed: v[ctr::RESTORE_FAILED as usize],
            sampled_out: v[ctr::SAMPLED_OUT as usize],
            capped: v[ctr::CAPPED as usize],
            masked: v[ctr::MASKED as usize],
            masked_bytes: v[ctr::MASKED_BYTES as usize],
            unparseable: v[ctr::UNPARSEABLE as usize],
            fallback_dropped: v[ctr::FALLBACK_DROPPED as usize],
            mask_failed: v[ctr::MASK_FAILED as usize],
            tcp_sessions: v[ctr::TCP_SESSIONS as usize],
            tcp_established: v[ctr::TCP_ESTABLISHED as usize],
            tcp_shadow_resets: v[ctr::TCP_SHADOW_RESETS as usize],
            tcp_shadow_resets_untracked: v[ctr::TCP_SHADOW_RESETS_UNTRACKED as usize],
            tcp_idle: v[ctr::TCP_IDLE as usize],
            tcp_waiting: v[ctr::TCP_WAITING as usize],
            tcp_not_tracked: v[ctr::TCP_NOT_TRACKED as usize],
            tcp_translated: v[ctr::TCP_TRANSLATED as usize],
            tcp_closed: v[ctr::TCP_CLOSED as usize],
            tcp_failed: v[ctr::TCP_FAILED as usize],
            target_gone: v[ctr::TARGET_GONE as usize],
            flows_assigned: v[ctr::FLOWS_ASSIGNED as usize],
            mask_body_passed: v[ctr::MASK_BODY_PASSED as usize],
            mask_seq_lost: v[ctr::MASK_SEQ_LOST as usize],
            mask_untracked: v[ctr::MASK_UNTRACKED as usize],
            pseudonymised: v[ctr::PSEUDONYMISED as usize],
            pseudo_failed: v[ctr::PSEUDO_FAILED as usize],
            tcp_hold_loops: v[ctr::TCP_HOLD_LOOPS as usize],
            tcp_hold_released: v[ctr::TCP_HOLD_RELEASED as usize],
            tcp_hold_expired: v[ctr::TCP_HOLD_EXPIRED as usize],
            tcp_syn_retries: v[ctr::TCP_SYN_RETRIES as usize],
            mask_csum_deferred: v[ctr::MASK_CSUM_DEFERRED as usize],
        }
    }
}

/// One interface clones are sent to (a shadow replica's host veth end), with the
/// per-target programs attached to it.
struct Target {
    name: String,
    ifindex: u32,
    mac: [u8; 6],
    /// `MirrorTarget::gen` of the slot it occupies.
    gen: u32,
    mask_link: Option<SchedClassifierLinkId>,
    learn_link: Option<SchedClassifierLinkId>,
    tcp_link: Option<SchedClassifierLinkId>,
}

/// A running mirror. Dropping it detaches every program.
pub struct Mirror {
    ebpf: Ebpf,
    spec: MirrorSpec,
    cfg: MirrorConfig,
    tc_mode: TcMode,
    xdp_mode: Option<XdpMode>,
    /// The network namespace it was attached in (where its interfaces are).
    netns: NetNs,
    /// The live targets, in `MIRROR_TARGETS` order.
    targets: Vec<Target>,
    next_gen: u32,
    /// The hold loop (TCP sessions with `tcp_hold` > 0): deleted after the programs.
    hold: Option<HoldLoop>,
    /// The primary interface's programs and the interface they are on.
    primary: PrimaryLinks,
    /// The configured target is gone (see [`Mirror::follow`]).
    target_missing: bool,
    /// The primary interface's index before it went (for the `back` report).
    primary_was: Option<u32>,
    /// The index of a primary interface the programs could not be attached to (reported
    /// once, retried every look).
    failed_attach: Option<u32>,
}

/// The programs on the primary interface: its index when they were attached (None: the
/// interface is gone and nothing is attached) and their links, to detach them from an
/// interface that is gone or made again.
#[derive(Default)]
struct PrimaryLinks {
    ifindex: Option<u32>,
    xdp: Option<XdpLinkId>,
    isn: Option<SchedClassifierLinkId>,
    tc: Option<SchedClassifierLinkId>,
}

/// What happened to one of the mirror's interfaces since the last look ([`Mirror::follow`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LinkChange {
    /// Its name.
    pub interface: String,
    /// `mirror.interface` (the primary's) or `mirror.shadow_interface`.
    pub role: &'static str,
    /// `gone`; `recreated` (a new interface of that name: the programs are on it now);
    /// `moved` (the primary's address leads to another interface now, as after a pod's
    /// restart: the programs are on it now); `found` (an address waited for since the start
    /// leads to an interface now); `back` (after it was gone); `attach_failed`
    /// (a new interface the programs could not be attached to: tried again at the next
    /// look).
    pub change: &'static str,
    pub old_ifindex: Option<u32>,
    pub new_ifindex: Option<u32>,
    /// Why the attach failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `mirror.primary_address`, when the interface is found from it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<std::net::IpAddr>,
    /// The interface before, when the address now leads to another one (`moved`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_interface: Option<String>,
    /// Why no interface is found for the address (`gone`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl LinkChange {
    /// The change as a JSON event line of `run --json` (`"event": "link"`).
    pub fn event(&self, t_s: f64) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["event"] = "link".into();
        v["t_s"] = t_s.into();
        v
    }
}

/// The hold loop: a veth pair in the mirror's namespace. Held segments are sent out of end
/// A, whose token-bucket qdisc paces them (`HOLD_RATE`); `shadow_hold` on end B's ingress
/// sends them back to their flow's shadow interface, where `shadow_mask` decides again.
struct HoldLoop {
    veth: link::Veth,
}

impl HoldLoop {
    /// Names unique to this process and call: `shdq`, the pid and a per-process count in
    /// hex, `p` between them, then `a`/`b` (at most 15 bytes for pids below 2^22).
    fn names() -> (String, String) {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed) & 0xff;
        let pid = std::process::id();
        (format!("shdq{pid:x}p{n:x}a"), format!("shdq{pid:x}p{n:x}b"))
    }

    /// Delete hold loops in the calling thread's namespace left by agents that are gone (a
    /// killed agent cannot delete its own).
    fn sweep() {
        let Ok(links) = link::list(None) else {
            return;
        };
        for l in links {
            let Some(pid) = l
                .name
                .strip_prefix("shdq")
                .and_then(|r| r.split_once('p'))
                .and_then(|(p, _)| u32::from_str_radix(p, 16).ok())
            else {
                continue;
            };
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                tracing::info!(link = %l.name, "removing a hold loop left by a gone agent");
                let _ = link::delete(&l.name, None);
            }
        }
    }

    /// Create the loop in the calling thread's namespace and attach `shadow_hold`; returns
    /// it with the kernel configuration to write.
    fn create(
        bpf: &mut Ebpf,
        mode: TcMode,
        options: &MirrorOptions,
    ) -> Result<(HoldLoop, TcpHoldConfig), MirrorError> {
        Self::sweep();
        let (a, b) = Self::names();
        let setup = |what: &'static str, e: link::LinkError| MirrorError::HoldLoop {
            what,
            interface: a.clone(),
            source: Box::new(e),
        };
        let veth = link::Veth::create(link::VethEnd::here(&a), link::VethEnd::here(&b))
            .map_err(|e| setup("creating the veth pair", e))?;
        for name in [&a, &b] {
            // No IPv6 autoconfiguration chatter on the loop (best effort).
            let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
            link::set_up(name, None).map_err(|e| setup("setting it up", e))?;
        }
        link::set_tbf(&a, None, HOLD_RATE, HOLD_BURST, HOLD_QUEUE)
            .map_err(|e| setup("adding its token bucket qdisc", e))?;
        let attach_err = |e: aya::programs::ProgramError| MirrorError::Attach {
            program: PROG_MIRROR_HOLD,
            interface: b.clone(),
            detail: format_program_error(&e),
        };
        let prog: &mut SchedClassifier = program_mut(bpf, PROG_MIRROR_HOLD)?;
        prog.load().map_err(attach_err)?;
        prog.attach_with_options(&b, TcAttachType::Ingress, mode.options(&b, false, 0))
            .map_err(attach_err)?;
        let ns = |d: std::time::Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let cfg = TcpHoldConfig {
            ifindex: ifindex(&a, "hold loop")?,
            _pad: 0,
            hold_ns: ns(options.tcp_hold),
            syn_retry_ns: ns(options.tcp_syn_retry),
        };
        tracing::info!(loop_a = %a, loop_b = %b, ?cfg, "TCP hold loop ready");
        Ok((HoldLoop { veth }, cfg))
    }
}

fn ifindex(name: &str, role: &'static str) -> Result<u32, MirrorError> {
    nix::net::if_::if_nametoindex(name).map_err(|source| MirrorError::NoInterface {
        interface: name.to_string(),
        role,
        source,
    })
}

impl Mirror {
    /// Load the mirror, write its rules and attach it, in the calling thread's network
    /// namespace. Nothing is attached when any step fails.
    pub fn attach(spec: MirrorSpec) -> Result<Mirror, MirrorError> {
        Self::attach_with(spec, true)
    }

    /// [`Mirror::attach`] with cloning off: every program is loaded and attached, but the
    /// primary's packets are only counted (`disabled`) until [`Mirror::set_enabled`]. Several
    /// mirrors of one interface (what-if replicas) start cloning together this way, although
    /// loading each takes seconds in the verifier.
    pub fn attach_paused(spec: MirrorSpec) -> Result<Mirror, MirrorError> {
        Self::attach_with(spec, false)
    }

    fn attach_with(spec: MirrorSpec, enabled: bool) -> Result<Mirror, MirrorError> {
        if spec.rules.len() > MAX_RULES as usize {
            return Err(MirrorError::TooManyRules {
                n: spec.rules.len(),
                max: MAX_RULES,
            });
        }
        let mut spec = spec;
        // By address: the interface traffic to it leaves through. One not found yet (a pod
        // not started, whose route is not there yet) is waited for: the primary's programs
        // are attached when `follow` finds it. An address of this host is a config error.
        let mut waiting = None;
        if let Some(address) = spec.address {
            match link::towards(address, None) {
                Ok(t) => spec.interface = t.name,
                Err(reason @ link::NotTowards::Local) => {
                    return Err(MirrorError::Unresolved { address, reason })
                }
                Err(reason) => {
                    tracing::warn!(%address, %reason, "no interface for mirror.primary_address yet: waiting for it");
                    spec.interface.clear();
                    waiting = Some(reason.to_string());
                }
            }
        }
        if spec.xdp && spec.direction == Direction::Egress {
            return Err(MirrorError::XdpEgress {
                interface: spec.interface,
            });
        }
        if waiting.is_none() {
            ifindex(&spec.interface, "mirror.interface")?;
        }
        // Before anything is created: a kernel without a helper the programs call.
        ebpf::probe_mirror_helpers(spec.xdp)?;
        let shadow_ifindex = ifindex(&spec.shadow_interface, "mirror.shadow_interface")?;
        let netns = NetNs::current().map_err(MirrorError::Netns)?;
        let mut bpf = ebpf::MIRROR.open()?;

        // Policy first, so the programs never run with a half-written rule set.
        write_rules(&mut bpf, 0, &spec.rules, &spec.options.rule_masks)?;
        let rate = spec.options.sample_rate;
        if !(0.0..=1.0).contains(&rate) {
            return Err(MirrorError::SampleRate { rate });
        }
        let mut c = MirrorConfig {
            shadow_ifindex,
            n_rules: spec.rules.len() as u32,
            shadow_mac: spec.shadow_mac,
            flags: if enabled { FLAG_ENABLED } else { 0 },
            hash_seed: if spec.options.hash_seed != 0 {
                spec.options.hash_seed
            } else {
                random_seed()
            },
            n_targets: 1,
            ..MirrorConfig::default()
        };
        spec.options.apply(&mut c);
        write_mask(&mut bpf, &spec)?;
        write_target(
            &mut bpf,
            0,
            MirrorTarget {
                ifindex: shadow_ifindex,
                gen: 1,
                mac: spec.shadow_mac,
                _pad: [0; 2],
            },
        )?;
        write_cfg(&mut bpf, c)?;

        let attach_err = |program, detail: String| MirrorError::Attach {
            program,
            interface: spec.interface.clone(),
            detail,
        };

        for name in [PROG_MIRROR_TC]
            .into_iter()
            .chain(tcp_isn(&spec).then_some(PROG_MIRROR_ISN))
        {
            let prog: &mut SchedClassifier = program_mut(&mut bpf, name)?;
            prog.load()
                .map_err(|e| attach_err(name, format_program_error(&e)))?;
        }
        if spec.xdp {
            let prog: &mut Xdp = program_mut(&mut bpf, PROG_MIRROR_XDP)?;
            prog.load()
                .map_err(|e| attach_err(PROG_MIRROR_XDP, format_program_error(&e)))?;
        }

        // The per-target programs on the shadow interface first (masking on its egress, so
        // no clone leaves unmasked once the ingress program starts cloning).
        let tcp = spec.options.tcp != TcpSessions::Off;
        let prog: &mut SchedClassifier = program_mut(&mut bpf, PROG_MIRROR_MASK)?;
        prog.load()
            .map_err(|e| attach_err(PROG_MIRROR_MASK, format_program_error(&e)))?;
        if tcp {
            for name in [PROG_MIRROR_LEARN, PROG_MIRROR_TCP] {
                let prog: &mut SchedClassifier = program_mut(&mut bpf, name)?;
                prog.load()
                    .map_err(|e| attach_err(name, format_program_error(&e)))?;
            }
        }
        let tc_mode = TcMode::detect();
        let (mask_link, tcp_links) = attach_target(&mut bpf, &spec.shadow_interface, tc_mode, tcp)?;
        let (learn_link, tcp_link) = tcp_links.map_or((None, None), |(l, t)| (Some(l), Some(t)));
        let first = Target {
            name: spec.shadow_interface.clone(),
            ifindex: shadow_ifindex,
            mac: spec.shadow_mac,
            gen: 1,
            mask_link: Some(mask_link),
            learn_link,
            tcp_link,
        };

        // The hold loop before any clone is made, so no segment is held into nothing.
        let hold = if spec.options.tcp == TcpSessions::Translate && !spec.options.tcp_hold.is_zero()
        {
            let (hold, hc) = HoldLoop::create(&mut bpf, tc_mode, &spec.options)?;
            let mut m: Array<&mut MapData, TcpHoldConfig> = map_mut(&mut bpf, MAP_TCP_HOLD)?;
            m.set(0, hc, 0).map_err(|source| MirrorError::Map {
                map: MAP_TCP_HOLD,
                source,
            })?;
            Some(hold)
        } else {
            None
        };

        // The primary interface's programs last: clones start with them.
        let (primary, xdp_mode) = if waiting.is_some() {
            (PrimaryLinks::default(), None)
        } else {
            attach_primary(&mut bpf, &spec, tc_mode)?
        };
        tracing::info!(
            interface = %spec.interface,
            address = ?spec.address,
            direction = ?spec.direction,
            shadow = %spec.shadow_interface,
            rules = spec.rules.len(),
            ?tc_mode,
            ?xdp_mode,
            "mirror attached"
        );
        Ok(Mirror {
            ebpf: bpf,
            spec,
            cfg: c,
            tc_mode,
            xdp_mode,
            netns,
            targets: vec![first],
            next_gen: 2,
            hold,
            primary,
            target_missing: false,
            primary_was: None,
            failed_attach: None,
        })
    }

    /// Looks at the mirror's interfaces again, by name, in its network namespace. The
    /// primary's interface may be removed and made again under the mirror (a container or a
    /// VM restarted, a link reconfigured): its programs go with the old one, and the mirror
    /// would be silent from then on. So an interface of that name with a new index gets the
    /// programs again (`recreated`; `back` after it was gone), and one that is gone is
    /// reported once (`gone`). With `target` the configured shadow interface is followed the
    /// same way (with a shadow group, the group sets its replicas as the targets: see
    /// [`Mirror::set_targets`]). Counters, flows and sessions carry on.
    pub fn follow(&mut self, target: bool) -> Result<Vec<LinkChange>, MirrorError> {
        if self.netns.is_current() {
            return Ok(self.follow_here(target));
        }
        let netns = self.netns.try_clone().map_err(MirrorError::Netns)?;
        netns
            .run_in(|| self.follow_here(target))
            .map_err(MirrorError::Netns)
    }

    /// The configured interfaces that are gone now (names; the primary's address when its
    /// interface is found from it).
    pub fn missing(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.primary.ifindex.is_none() {
            out.push(match self.spec.address {
                Some(a) => a.to_string(),
                None => self.spec.interface.clone(),
            });
        }
        if self.target_missing {
            out.extend(self.targets.first().map(|t| t.name.clone()));
        }
        out
    }

    fn follow_here(&mut self, target: bool) -> Vec<LinkChange> {
        let mut out = Vec::new();
        let name = self.spec.interface.clone();
        let address = self.spec.address;
        // By address: the interface traffic to it leaves through now (a restarted pod's
        // veth has a new name); by name otherwise.
        let (now, now_name, reason) = match address {
            None => (
                nix::net::if_::if_nametoindex(name.as_str()).ok(),
                name.clone(),
                None,
            ),
            Some(a) => match link::towards(a, None) {
                Ok(t) => (Some(t.index), t.name, None),
                Err(e) => (None, name.clone(), Some(e.to_string())),
            },
        };
        let change = |change, old, new, error| LinkChange {
            interface: now_name.clone(),
            role: "interface",
            change,
            old_ifindex: old,
            new_ifindex: new,
            error,
            address,
            old_interface: (now_name != name && !name.is_empty()).then(|| name.clone()),
            reason: reason.clone(),
        };
        match (self.primary.ifindex, now) {
            (Some(a), Some(b)) if a == b => {
                // The same interface renamed: nothing to attach.
                self.spec.interface = now_name.clone();
            }
            (None, None) => {}
            (Some(a), None) => {
                self.detach_primary();
                self.primary.ifindex = None;
                self.primary_was = Some(a);
                out.push(change("gone", Some(a), None, None));
            }
            (old, Some(b)) => {
                self.detach_primary();
                let was = old.or(self.primary_was);
                self.spec.interface = now_name.clone();
                match attach_primary(&mut self.ebpf, &self.spec, self.tc_mode) {
                    Ok((links, xdp_mode)) => {
                        self.primary = links;
                        self.xdp_mode = xdp_mode;
                        let what = match (old, was) {
                            // Never attached before: the address was waited for.
                            (None, None) => "found",
                            (None, Some(_)) => "back",
                            (Some(_), _) if now_name != name => "moved",
                            (Some(_), _) => "recreated",
                        };
                        out.push(change(what, was, Some(b), None));
                    }
                    Err(e) => {
                        // Not attached: tried again at the next look.
                        self.primary.ifindex = None;
                        self.primary_was = was;
                        if self.failed_attach != Some(b) {
                            self.failed_attach = Some(b);
                            out.push(change(
                                "attach_failed",
                                was,
                                Some(b),
                                Some(crate::error::chain(&e)),
                            ));
                        }
                    }
                }
            }
        }
        if target {
            out.extend(self.follow_target());
        }
        out
    }

    /// The configured shadow interface (the only target without a shadow group).
    fn follow_target(&mut self) -> Option<LinkChange> {
        let (name, mac, old) = {
            let t = self.targets.first()?;
            (t.name.clone(), t.mac, t.ifindex)
        };
        let now = nix::net::if_::if_nametoindex(name.as_str()).ok();
        let mut change = LinkChange {
            interface: name.clone(),
            role: "shadow_interface",
            change: "gone",
            old_ifindex: Some(old),
            new_ifindex: now,
            error: None,
            address: None,
            old_interface: None,
            reason: None,
        };
        match now {
            None if self.target_missing => None,
            None => {
                // Clones to it fail (`clone_failed`) and the originals pass, until it is back.
                self.target_missing = true;
                Some(change)
            }
            Some(b) if b == old => {
                self.target_missing = false;
                None
            }
            Some(_) => {
                // Same name and MAC, a new index: the per-target programs attached to it,
                // its slot given a new generation, the old one's links dropped.
                if let Err(e) = self.set_targets_here(&[(name, mac)]) {
                    change.change = "attach_failed";
                    change.error = Some(crate::error::chain(&e));
                    return Some(change);
                }
                change.change = if self.target_missing {
                    "back"
                } else {
                    "recreated"
                };
                self.target_missing = false;
                Some(change)
            }
        }
    }

    /// Detach the primary interface's programs (errors ignored: the interface may be gone
    /// with them).
    fn detach_primary(&mut self) {
        let links = std::mem::take(&mut self.primary);
        self.primary.ifindex = links.ifindex;
        for (program, link) in [(PROG_MIRROR_TC, links.tc), (PROG_MIRROR_ISN, links.isn)] {
            let Some(link) = link else { continue };
            if let Ok(prog) = program_mut::<SchedClassifier>(&mut self.ebpf, program) {
                if let Err(e) = prog.detach(link) {
                    tracing::debug!(program, error = %e, "detach from the primary interface");
                }
            }
        }
        if let Some(link) = links.xdp {
            if let Ok(prog) = program_mut::<Xdp>(&mut self.ebpf, PROG_MIRROR_XDP) {
                if let Err(e) = prog.detach(link) {
                    tracing::debug!(error = %e, "detach XDP from the primary interface");
                }
            }
        }
    }

    /// Spread the mirrored flows over `targets` (interface, MAC of its far end), in the
    /// mirror's network namespace, without reattaching the mirror. Each flow keeps the
    /// target it was assigned on its first clone (TCP: its SYN) for as long as that target
    /// stays in the same slot; a flow whose target was removed gets no more clones
    /// (`target_gone`). New flows are assigned by flow hash over the new count. The
    /// per-target programs (masking, TCP learning) are attached to new targets before any
    /// clone can reach them and detached from removed ones.
    pub fn set_targets(&mut self, targets: &[(String, [u8; 6])]) -> Result<(), MirrorError> {
        if targets.is_empty() || targets.len() > MAX_TARGETS as usize {
            return Err(MirrorError::Targets {
                n: targets.len(),
                max: MAX_TARGETS,
            });
        }
        for (i, (name, _)) in targets.iter().enumerate() {
            if targets[..i].iter().any(|(n, _)| n == name) {
                return Err(MirrorError::DuplicateTarget {
                    interface: name.clone(),
                });
            }
        }
        let netns = self.netns.try_clone().map_err(MirrorError::Netns)?;
        netns
            .run_in(|| self.set_targets_here(targets))
            .map_err(MirrorError::Netns)?
    }

    fn set_targets_here(&mut self, targets: &[(String, [u8; 6])]) -> Result<(), MirrorError> {
        // Resolve every name before changing anything.
        let idx = targets
            .iter()
            .map(|(name, _)| ifindex(name, "mirror target"))
            .collect::<Result<Vec<_>, _>>()?;
        let tcp = self.spec.options.tcp != TcpSessions::Off;
        let known = |t: &Target, name: &str, ifx: u32| t.ifindex == ifx && t.name == name;
        // Phase 1: attach the per-target programs to new interfaces; on failure detach what
        // this call attached and leave the mirror as it was.
        let mut attached: Vec<Target> = Vec::new();
        for ((name, mac), &ifx) in targets.iter().zip(&idx) {
            if self.targets.iter().any(|t| known(t, name, ifx))
                || attached.iter().any(|t| known(t, name, ifx))
            {
                continue;
            }
            match attach_target(&mut self.ebpf, name, self.tc_mode, tcp) {
                Ok((m, l)) => {
                    let (learn_link, tcp_link) =
                        l.map_or((None, None), |(l, t)| (Some(l), Some(t)));
                    attached.push(Target {
                        name: name.clone(),
                        ifindex: ifx,
                        mac: *mac,
                        gen: 0,
                        mask_link: Some(m),
                        learn_link,
                        tcp_link,
                    })
                }
                Err(e) => {
                    for mut t in attached {
                        self.detach_target(&mut t);
                    }
                    return Err(e);
                }
            }
        }
        // Phase 2: the new slot list; a slot keeps its generation (and so its flows) when it
        // holds the same interface and MAC as before.
        let mut old: Vec<Target> = std::mem::take(&mut self.targets);
        let mut new = Vec::with_capacity(targets.len());
        for (slot, ((name, mac), &ifx)) in targets.iter().zip(&idx).enumerate() {
            let same_slot = self
                .cfg_target(slot as u32)
                .is_some_and(|t| t.ifindex == ifx && t.mac == *mac);
            let mut t = if let Some(i) = old.iter().position(|t| known(t, name, ifx)) {
                old.swap_remove(i)
            } else {
                // Attached in phase 1 (names are unique).
                let i = attached
                    .iter()
                    .position(|t| known(t, name, ifx))
                    .unwrap_or_default();
                attached.swap_remove(i)
            };
            let prev_gen = self.cfg_target(slot as u32).map(|t| t.gen);
            t.gen = match (same_slot, prev_gen) {
                (true, Some(g)) => g,
                _ => {
                    let g = self.next_gen;
                    self.next_gen = self.next_gen.wrapping_add(1).max(1);
                    g
                }
            };
            t.mac = *mac;
            new.push(t);
        }
        let mut c = self.cfg;
        c.n_targets = new.len() as u32;
        c.shadow_ifindex = new[0].ifindex;
        c.shadow_mac = new[0].mac;
        let shrink = c.n_targets < self.cfg.n_targets;
        if shrink {
            // Fewer slots first: no clone goes to a slot about to change.
            write_cfg(&mut self.ebpf, c)?;
            self.cfg.n_targets = c.n_targets;
        }
        for (slot, t) in new.iter().enumerate() {
            write_target(
                &mut self.ebpf,
                slot as u32,
                MirrorTarget {
                    ifindex: t.ifindex,
                    gen: t.gen,
                    mac: t.mac,
                    _pad: [0; 2],
                },
            )?;
        }
        write_cfg(&mut self.ebpf, c)?;
        self.cfg = c;
        self.spec.shadow_interface = new[0].name.clone();
        self.spec.shadow_mac = new[0].mac;
        // Interfaces no longer targets: detach (they may be gone already with their links).
        for mut t in old {
            self.detach_target(&mut t);
        }
        tracing::info!(
            targets = ?new.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            "mirror targets set"
        );
        self.targets = new;
        Ok(())
    }

    /// Detach the per-target programs of `t` (errors ignored: its interface may be gone).
    fn detach_target(&mut self, t: &mut Target) {
        for (program, link) in [
            (PROG_MIRROR_MASK, t.mask_link.take()),
            (PROG_MIRROR_LEARN, t.learn_link.take()),
            (PROG_MIRROR_TCP, t.tcp_link.take()),
        ] {
            let Some(link) = link else { continue };
            if let Ok(prog) = program_mut::<SchedClassifier>(&mut self.ebpf, program) {
                if let Err(e) = prog.detach(link) {
                    tracing::debug!(interface = %t.name, program, error = %e, "detach");
                }
            }
        }
    }

    fn cfg_target(&mut self, slot: u32) -> Option<MirrorTarget> {
        if slot >= self.cfg.n_targets {
            return None;
        }
        let map: Array<&mut MapData, MirrorTarget> =
            map_mut(&mut self.ebpf, MAP_MIRROR_TARGETS).ok()?;
        map.get(&slot, 0).ok()
    }

    /// The hold loop's veth ends (A: held segments leave through its netem delay; B: they
    /// come back), when TCP sessions are translated with a hold.
    pub fn hold_loop(&self) -> Option<(&str, &str)> {
        self.hold
            .as_ref()
            .map(|h| (h.veth.a_name(), h.veth.b_name()))
    }

    /// The live targets (interface, MAC), in slot order.
    pub fn targets(&self) -> Vec<(String, [u8; 6])> {
        self.targets
            .iter()
            .map(|t| (t.name.clone(), t.mac))
            .collect()
    }

    /// Flows assigned to each live target so far (summed over CPUs), in slot order. A slot
    /// reused by another interface keeps counting.
    pub fn flows_per_target(&self) -> Result<Vec<u64>, MirrorError> {
        let map = self
            .ebpf
            .map(MAP_TARGET_FLOWS)
            .ok_or(LoadError::MissingMap {
                object: ebpf::MIRROR.name,
                map: MAP_TARGET_FLOWS,
            })?;
        let c: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).map_err(|source| MirrorError::Map {
                map: MAP_TARGET_FLOWS,
                source,
            })?;
        (0..self.targets.len() as u32)
            .map(|i| {
                c.get(&i, 0)
                    .map(|v| v.iter().sum())
                    .map_err(|source| MirrorError::Map {
                        map: MAP_TARGET_FLOWS,
                        source,
                    })
            })
            .collect()
    }

    /// Change the fraction of flows mirrored, effective from the next packet (no reattach).
    /// Flows keep their hash: raising the rate adds flows, lowering it removes some.
    pub fn set_sample_rate(&mut self, rate: f64) -> Result<(), MirrorError> {
        if !(0.0..=1.0).contains(&rate) {
            return Err(MirrorError::SampleRate { rate });
        }
        self.spec.options.sample_rate = rate;
        self.reapply()
    }

    /// Start (or stop) cloning, effective from the next packet. Counters, flows and
    /// sessions carry on; while stopped the primary's packets are counted as `disabled`.
    pub fn set_enabled(&mut self, on: bool) -> Result<(), MirrorError> {
        self.set_flag(FLAG_ENABLED, on)
    }

    /// Set or clear one `MirrorConfig::flags` bit, effective from the next packet.
    pub(crate) fn set_flag(&mut self, flag: u16, on: bool) -> Result<(), MirrorError> {
        let mut c = self.cfg;
        if on {
            c.flags |= flag;
        } else {
            c.flags &= !flag;
        }
        write_cfg(&mut self.ebpf, c)?;
        self.cfg = c;
        Ok(())
    }

    /// Change the clone rate caps (0 = none), effective from the next packet.
    pub fn set_caps(
        &mut self,
        pps: u64,
        bytes_per_sec: u64,
        burst_ms: u64,
    ) -> Result<(), MirrorError> {
        self.spec.options.cap_pps = pps;
        self.spec.options.cap_bytes_per_sec = bytes_per_sec;
        self.spec.options.cap_burst_ms = burst_ms;
        self.reapply()
    }

    fn reapply(&mut self) -> Result<(), MirrorError> {
        let mut c = self.cfg;
        self.spec.options.apply(&mut c);
        write_cfg(&mut self.ebpf, c)?;
        self.cfg = c;
        Ok(())
    }

    /// Replace the selection rules and their masks while the mirror runs (a reload): the
    /// new set is written to the per-rule slots not in use, its counters zeroed, then made
    /// live with one write of the config (`MirrorConfig::rule_base`, `n_rules`). A packet
    /// sees either set whole, and a clone is masked by the rule that selected it (its mark
    /// holds the rule's slot), also when the set changes while it is on its way. Per-rule
    /// counters (`masked_per_rule`, `rule_load`) start again from zero. The header and
    /// parameter lists, fill and tokens are [`Mirror::set_mask`]'s.
    pub fn set_rules(&mut self, rules: Vec<Rule>, masks: Vec<RuleMask>) -> Result<(), MirrorError> {
        if rules.len() > MAX_RULES as usize {
            return Err(MirrorError::TooManyRules {
                n: rules.len(),
                max: MAX_RULES,
            });
        }
        let base = if self.cfg.rule_base == 0 {
            MAX_RULES
        } else {
            0
        };
        debug_assert!(base + MAX_RULES <= RULE_SLOTS);
        write_rules(&mut self.ebpf, base, &rules, &masks)?;
        zero_per_cpu::<u64>(&mut self.ebpf, MAP_MASK_RULE_CTRS, base..base + MAX_RULES)?;
        zero_per_cpu::<RuleLoad>(&mut self.ebpf, MAP_RULE_LOAD, base..base + MAX_RULES)?;
        let mut c = self.cfg;
        c.rule_base = base;
        c.n_rules = rules.len() as u32;
        write_cfg(&mut self.ebpf, c)?;
        self.cfg = c;
        tracing::info!(rules = rules.len(), slots = base, "mirror rules replaced");
        self.spec.rules = rules;
        self.spec.options.rule_masks = masks;
        Ok(())
    }

    /// Replace what masking looks for (header and parameter names, fill byte, scan window,
    /// token key) while the mirror runs (a reload): the new spec is written to the
    /// `MASK_SPEC` slot not in use and made live with one write of the config
    /// (`FLAG_MASK_SLOT`), so a segment is masked with either spec whole. Per-flow parse
    /// state carries on: a header whose name is complete by then is masked by the old
    /// list, every later one by the new; a value a token is being streamed for finishes
    /// with the new key (still a token, not the secret).
    pub fn set_mask(&mut self, mask: MaskOptions) -> Result<(), MirrorError> {
        let slot = u32::from(self.cfg.flags & FLAG_MASK_SLOT == 0);
        write_mask_spec(&mut self.ebpf, slot, &mask)?;
        let mut c = self.cfg;
        c.flags ^= FLAG_MASK_SLOT;
        write_cfg(&mut self.ebpf, c)?;
        self.cfg = c;
        tracing::info!(
            headers = mask.headers.len(),
            params = mask.params.len(),
            slot,
            "mirror mask spec replaced"
        );
        self.spec.options.mask = mask;
        Ok(())
    }

    /// Clones with bytes masked, per rule, summed over CPUs.
    pub fn masked_per_rule(&self) -> Result<Vec<u64>, MirrorError> {
        let map = self
            .ebpf
            .map(MAP_MASK_RULE_CTRS)
            .ok_or(LoadError::MissingMap {
                object: ebpf::MIRROR.name,
                map: MAP_MASK_RULE_CTRS,
            })?;
        let c: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).map_err(|source| MirrorError::Map {
                map: MAP_MASK_RULE_CTRS,
                source,
            })?;
        (self.cfg.rule_base..self.cfg.rule_base + self.spec.rules.len() as u32)
            .map(|i| {
                c.get(&i, 0)
                    .map(|v| v.iter().sum())
                    .map_err(|source| MirrorError::Map {
                        map: MAP_MASK_RULE_CTRS,
                        source,
                    })
            })
            .collect()
    }

    /// Run one of the mirror's TC programs (`PROG_MIRROR_TC` or `PROG_MIRROR_MASK`) once on
    /// `frame` through `BPF_PROG_TEST_RUN`, with `skb->mark = mark`, in the calling thread's
    /// network namespace (a clone made by the TC program really leaves through the shadow
    /// interface). Returns the program's verdict and the frame as the program left it.
    pub fn test_run(
        &self,
        program: &'static str,
        frame: &[u8],
        mark: u32,
    ) -> Result<(u32, Vec<u8>), MirrorError> {
        let prog = self
            .ebpf
            .program(program)
            .ok_or(LoadError::MissingProgram {
                object: ebpf::MIRROR.name,
                program,
            })?;
        let prog: &SchedClassifier = prog.try_into().map_err(|source| LoadError::ProgramType {
            object: ebpf::MIRROR.name,
            program,
            source,
        })?;
        // The head of `struct __sk_buff`: len, pkt_type (both must be 0), mark.
        let mut ctx = [0u8; 12];
        ctx[8..12].copy_from_slice(&mark.to_ne_bytes());
        let mut out = vec![0u8; frame.len() + 256];
        let r = aya::programs::TestRun::test_run(
            prog,
            aya::programs::TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..Default::default()
            },
        )
        .map_err(|e| MirrorError::TestRun {
            program,
            detail: format_program_error(&e),
        })?;
        out.truncate(r.data_size_out as usize);
        Ok((r.return_value, out))
    }

    pub fn spec(&self) -> &MirrorSpec {
        &self.spec
    }

    pub fn tc_mode(&self) -> TcMode {
        self.tc_mode
    }

    pub fn xdp_attached(&self) -> bool {
        self.xdp_mode.is_some()
    }

    /// The TC program's counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, MirrorError> {
        let map = self
            .ebpf
            .map(MAP_MIRROR_CTRS)
            .ok_or(LoadError::MissingMap {
                object: ebpf::MIRROR.name,
                map: MAP_MIRROR_CTRS,
            })?;
        let ctrs: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).map_err(|source| MirrorError::Map {
                map: MAP_MIRROR_CTRS,
                source,
            })?;
        let mut sums = [0u64; ctr::N as usize];
        for (i, slot) in sums.iter_mut().enumerate() {
            let vals = ctrs
                .get(&(i as u32), 0)
                .map_err(|source| MirrorError::Map {
                    map: MAP_MIRROR_CTRS,
                    source,
                })?;
            *slot = vals.iter().sum();
        }
        Ok(Counters::from_slots(&sums))
    }

    /// The TCP session counters, with the live sessions counted in the flow map.
    pub fn tcp_counters(&self) -> Result<TcpCounters, MirrorError> {
        self.tcp_counters_of(&self.counters()?)
    }

    /// [`Mirror::tcp_counters`] from counters already read (`counters()`), so a caller that
    /// needs both reads the counter map once.
    pub fn tcp_counters_of(&self, c: &Counters) -> Result<TcpCounters, MirrorError> {
        let map = self.ebpf.map(MAP_TCP_FLOWS).ok_or(LoadError::MissingMap {
            object: ebpf::MIRROR.name,
            map: MAP_TCP_FLOWS,
        })?;
        let flows: HashMap<&MapData, FlowKey, TcpFlow> =
            HashMap::try_from(map).map_err(|source| MirrorError::Map {
                map: MAP_TCP_FLOWS,
                source,
            })?;
        let live = flows.keys().filter(Result::is_ok).count() as u64;
        Ok(TcpCounters {
            sessions: c.tcp_sessions,
            established: c.tcp_established,
            shadow_resets: c.tcp_shadow_resets,
            shadow_resets_untracked: c.tcp_shadow_resets_untracked,
            idle: c.tcp_idle,
            evicted: c
                .tcp_sessions
                .saturating_sub(c.tcp_closed + c.tcp_idle + live),
            closed: c.tcp_closed,
            live,
            segments_waiting: c.tcp_waiting,
            segments_released: c.tcp_hold_released,
            segments_expired: c.tcp_hold_expired,
            hold_passes: c.tcp_hold_loops,
            syn_retries: c.tcp_syn_retries,
            segments_not_tracked: c.tcp_not_tracked,
            segments_translated: c.tcp_translated,
            segments_failed: c.tcp_failed,
        })
    }

    /// Per-rule load seen by the XDP program, summed over CPUs (one entry per rule).
    pub fn rule_load(&self) -> Result<Vec<RuleLoad>, MirrorError> {
        let map = self.ebpf.map(MAP_RULE_LOAD).ok_or(LoadError::MissingMap {
            object: ebpf::MIRROR.name,
            map: MAP_RULE_LOAD,
        })?;
        let loads: PerCpuArray<&MapData, RuleLoad> =
            PerCpuArray::try_from(map).map_err(|source| MirrorError::Map {
                map: MAP_RULE_LOAD,
                source,
            })?;
        let mut out = Vec::with_capacity(self.spec.rules.len());
        let base = self.cfg.rule_base;
        for i in base..base + self.spec.rules.len() as u32 {
            let vals = loads.get(&i, 0).map_err(|source| MirrorError::Map {
                map: MAP_RULE_LOAD,
                source,
            })?;
            out.push(vals.iter().fold(RuleLoad::default(), |a, v| RuleLoad {
                packets: a.packets + v.packets,
                bytes: a.bytes + v.bytes,
                syns: a.syns + v.syns,
            }));
        }
        Ok(out)
    }
}

/// The per-target programs on one target interface: `shadow_mask` on its egress and, with
/// TCP sessions, `shadow_tcp` before it on the egress and `shadow_learn` first in its ingress
/// chain (before the replica's `shadow_discard`, which then drops what it saw). The programs
/// must be loaded. Returns the mask link and, with TCP, the (learn, tcp) links.
type TcpLinks = (SchedClassifierLinkId, SchedClassifierLinkId);

fn attach_target(
    bpf: &mut Ebpf,
    interface: &str,
    mode: TcMode,
    tcp: bool,
) -> Result<(SchedClassifierLinkId, Option<TcpLinks>), MirrorError> {
    let err = |program, e: aya::programs::ProgramError| MirrorError::Attach {
        program,
        interface: interface.to_string(),
        detail: format_program_error(&e),
    };
    let first = || mode.options(interface, true, PRIO_FIRST);
    let prog: &mut SchedClassifier = program_mut(bpf, PROG_MIRROR_MASK)?;
    // Behind `shadow_tcp` (first).
    let mask = prog
        .attach_with_options(
            interface,
            TcAttachType::Egress,
            mode.options(interface, false, PRIO_MASK),
        )
        .map_err(|e| err(PROG_MIRROR_MASK, e))?;
    if !tcp {
        return Ok((mask, None));
    }
    let prog: &mut SchedClassifier = program_mut(bpf, PROG_MIRROR_TCP)?;
    let tcp_link = match prog.attach_with_options(interface, TcAttachType::Egress, first()) {
        Ok(l) => l,
        Err(e) => {
            let e = err(PROG_MIRROR_TCP, e);
            if let Ok(prog) = program_mut::<SchedClassifier>(bpf, PROG_MIRROR_MASK) {
                let _ = prog.detach(mask);
            }
            return Err(e);
        }
    };
    let prog: &mut SchedClassifier = program_mut(bpf, PROG_MIRROR_LEARN)?;
    match prog.attach_with_options(interface, TcAttachType::Ingress, first()) {
        Ok(learn) => Ok((mask, Some((learn, tcp_link)))),
        Err(e) => {
            let e = err(PROG_MIRROR_LEARN, e);
            if let Ok(prog) = program_mut::<SchedClassifier>(bpf, PROG_MIRROR_TCP) {
                let _ = prog.detach(tcp_link);
            }
            if let Ok(prog) = program_mut::<SchedClassifier>(bpf, PROG_MIRROR_MASK) {
                let _ = prog.detach(mask);
            }
            Err(e)
        }
    }
}

/// Whether `shadow_isn` goes on the primary interface (TCP sessions).
fn tcp_isn(spec: &MirrorSpec) -> bool {
    spec.options.tcp != TcpSessions::Off
}

/// The primary interface's programs (loaded already): `shadow_load` (XDP, native or else
/// generic) when asked for, `shadow_isn` on the hook the primary's replies cross with TCP
/// sessions, and `shadow_mirror` on the hook its traffic crosses last (clones start with
/// it): ingress and egress, or the other way round ([`Direction`]). On failure what this call attached is
/// detached again.
fn attach_primary(
    bpf: &mut Ebpf,
    spec: &MirrorSpec,
    mode: TcMode,
) -> Result<(PrimaryLinks, Option<XdpMode>), MirrorError> {
    let interface = spec.interface.as_str();
    let mut links = PrimaryLinks {
        ifindex: Some(ifindex(interface, "mirror.interface")?),
        ..PrimaryLinks::default()
    };
    let err = |program, e: aya::programs::ProgramError| MirrorError::Attach {
        program,
        interface: interface.to_owned(),
        detail: format_program_error(&e),
    };
    let mut xdp_mode = None;
    let mut attach = |links: &mut PrimaryLinks| -> Result<(), MirrorError> {
        if spec.xdp {
            let prog: &mut Xdp = program_mut(bpf, PROG_MIRROR_XDP)?;
            let (link, mode) = match prog.attach(interface, XdpMode::Default) {
                Ok(l) => (l, XdpMode::Default),
                Err(first) => {
                    tracing::debug!(error = %first, "native XDP attach failed; trying generic XDP");
                    let l = prog
                        .attach(interface, XdpMode::Skb)
                        .map_err(|e| err(PROG_MIRROR_XDP, e))?;
                    (l, XdpMode::Skb)
                }
            };
            links.xdp = Some(link);
            xdp_mode = Some(mode);
        }
        let (mirror_hook, isn_hook) = spec.direction.hooks();
        if tcp_isn(spec) {
            let prog: &mut SchedClassifier = program_mut(bpf, PROG_MIRROR_ISN)?;
            let link = prog
                .attach_with_options(interface, isn_hook, mode.options(interface, false, 0))
                .map_err(|e| err(PROG_MIRROR_ISN, e))?;
            links.isn = Some(link);
        }
        let prog: &mut SchedClassifier = program_mut(bpf, PROG_MIRROR_TC)?;
        let link = prog
            .attach_with_options(interface, mirror_hook, mode.options(interface, false, 0))
            .map_err(|e| err(PROG_MIRROR_TC, e))?;
        links.tc = Some(link);
        Ok(())
    };
    match attach(&mut links) {
        Ok(()) => Ok((links, xdp_mode)),
        Err(e) => {
            for (program, link) in [(PROG_MIRROR_TC, links.tc), (PROG_MIRROR_ISN, links.isn)] {
                if let (Some(link), Ok(prog)) = (link, program_mut::<SchedClassifier>(bpf, program))
                {
                    let _ = prog.detach(link);
                }
            }
            if let (Some(link), Ok(prog)) = (links.xdp, program_mut::<Xdp>(bpf, PROG_MIRROR_XDP)) {
                let _ = prog.detach(link);
            }
            Err(e)
        }
    }
}

fn write_target(bpf: &mut Ebpf, slot: u32, t: MirrorTarget) -> Result<(), MirrorError> {
    let mut map: Array<&mut MapData, MirrorTarget> = map_mut(bpf, MAP_MIRROR_TARGETS)?;
    map.set(slot, t, 0).map_err(|source| MirrorError::Map {
        map: MAP_MIRROR_TARGETS,
        source,
    })
}

/// The mask spec into slot `slot` of `MASK_SPEC`, and the bulk fill buffer.
fn write_mask_spec(bpf: &mut Ebpf, slot: u32, m: &MaskOptions) -> Result<(), MirrorError> {
    let headers: Vec<&str> = m.headers.iter().map(String::as_str).collect();
    let params: Vec<&str> = m.params.iter().map(String::as_str).collect();
    let mut ks = MaskSpec::build_with_limit(&headers, &params, m.fill, m.scan_bytes)
        .map_err(MirrorError::MaskSpec)?;
    if let Some(key) = m.token_key {
        ks = ks.with_tokens(shadow_common::pseudo::PrfKey::from_bytes(key));
    }
    {
        let mut map: Array<&mut MapData, MaskSpec> = map_mut(bpf, MAP_MASK_SPEC)?;
        map.set(slot, ks, 0).map_err(|source| MirrorError::Map {
            map: MAP_MASK_SPEC,
            source,
        })?;
    }
    // The bulk fill of the "mask" fallback stores from this buffer. Until the new spec is
    // live, a clone masked with the old fill byte finds another byte here and is dropped
    // (`fill_buffer` in the eBPF program): never sent with anything but a fill byte.
    let mut map: Array<&mut MapData, [u8; MASK_FILL_MAP_LEN]> = map_mut(bpf, MAP_MASK_FILL)?;
    map.set(0, [m.fill; MASK_FILL_MAP_LEN], 0)
        .map_err(|source| MirrorError::Map {
            map: MAP_MASK_FILL,
            source,
        })
}

fn write_mask(bpf: &mut Ebpf, spec: &MirrorSpec) -> Result<(), MirrorError> {
    write_mask_spec(bpf, 0, &spec.options.mask)?;
    {
        let pc = spec
            .options
            .pseudonymise
            .map(|p| p.to_kernel())
            .unwrap_or_default();
        let mut map: Array<&mut MapData, PseudoConfig> = map_mut(bpf, MAP_PSEUDO_CFG)?;
        map.set(0, pc, 0).map_err(|source| MirrorError::Map {
            map: MAP_PSEUDO_CFG,
            source,
        })?;
    }
    Ok(())
}

/// The rule set starting at slot `base` of the per-rule maps: each rule and its mask (a
/// rule without one masks nothing).
fn write_rules(
    bpf: &mut Ebpf,
    base: u32,
    rules: &[Rule],
    masks: &[RuleMask],
) -> Result<(), MirrorError> {
    let kernel_masks = (0..rules.len())
        .map(|i| {
            masks
                .get(i)
                .map_or(Ok(MaskRule::default()), RuleMask::to_kernel)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut m: Array<&mut MapData, MirrorRule> = map_mut(bpf, MAP_MIRROR_RULES)?;
    for (i, r) in rules.iter().enumerate() {
        m.set(base + i as u32, r.to_kernel(), 0)
            .map_err(|source| MirrorError::Map {
                map: MAP_MIRROR_RULES,
                source,
            })?;
    }
    let mut m: Array<&mut MapData, MaskRule> = map_mut(bpf, MAP_MASK_RULES)?;
    for (i, r) in kernel_masks.into_iter().enumerate() {
        m.set(base + i as u32, r, 0)
            .map_err(|source| MirrorError::Map {
                map: MAP_MASK_RULES,
                source,
            })?;
    }
    Ok(())
}

fn write_cfg(bpf: &mut Ebpf, c: MirrorConfig) -> Result<(), MirrorError> {
    let mut cfg: Array<&mut MapData, MirrorConfig> = map_mut(bpf, MAP_MIRROR_CFG)?;
    cfg.set(0, c, 0).map_err(|source| MirrorError::Map {
        map: MAP_MIRROR_CFG,
        source,
    })
}

/// A per-attach random hash seed (from the kernel's random source; time as a fallback).
fn random_seed() -> u32 {
    let mut b = [0u8; 4];
    let got = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_ok();
    if got && b != [0; 4] {
        u32::from_le_bytes(b)
    } else {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() | 1)
            .unwrap_or(1)
    }
}

fn map_mut<'a, V: aya::Pod>(
    bpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<Array<&'a mut MapData, V>, MirrorError> {
    let map = bpf.map_mut(name).ok_or(LoadError::MissingMap {
        object: ebpf::MIRROR.name,
        map: name,
    })?;
    Array::try_from(map).map_err(|source| MirrorError::Map { map: name, source })
}

/// Sets `slots` of the per-CPU array `name` to zero on every CPU.
fn zero_per_cpu<V: aya::Pod + Default>(
    bpf: &mut Ebpf,
    name: &'static str,
    slots: std::ops::Range<u32>,
) -> Result<(), MirrorError> {
    let map = bpf.map_mut(name).ok_or(LoadError::MissingMap {
        object: ebpf::MIRROR.name,
        map: name,
    })?;
    let mut m: PerCpuArray<&mut MapData, V> =
        PerCpuArray::try_from(map).map_err(|source| MirrorError::Map { map: name, source })?;
    let io = |e| MirrorError::Map {
        map: name,
        source: aya::maps::MapError::IoError(e),
    };
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| io(e))?;
    for i in slots {
        let zero =
            aya::maps::PerCpuValues::try_from((0..cpus).map(|_| V::default()).collect::<Vec<V>>())
                .map_err(io)?;
        m.set(i, zero, 0)
            .map_err(|source| MirrorError::Map { map: name, source })?;
    }
    Ok(())
}

fn program_mut<'a, P>(bpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, MirrorError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = bpf.program_mut(name).ok_or(LoadError::MissingProgram {
        object: ebpf::MIRROR.name,
        program: name,
    })?;
    prog.try_into().map_err(|source| {
        LoadError::ProgramType {
            object: ebpf::MIRROR.name,
            program: name,
            source,
        }
        .into()
    })
}
