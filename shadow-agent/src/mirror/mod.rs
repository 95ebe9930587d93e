//! Input Data Mirror: loads `shadow-mirror`, attaches it to the primary's interface, writes
//! the selection rules and reads the counters.
//!
//! The TC program is attached through TCX where the kernel has it (>= 6.6) and through a
//! clsact qdisc otherwise. TCX links belong to this process: if the agent dies, the kernel
//! detaches the mirror and the primary's traffic flows exactly as without Shadow.

pub mod rule;

use aya::{
    maps::{Array, MapData, PerCpuArray},
    programs::{tc, SchedClassifier, TcAttachType, Xdp, XdpMode},
    util::KernelVersion,
    Ebpf,
};
use shadow_common::{
    maps::{
        MAP_MIRROR_CFG, MAP_MIRROR_CTRS, MAP_MIRROR_RULES, MAP_RULE_LOAD, PROG_MIRROR_TC,
        PROG_MIRROR_XDP,
    },
    mirror::{ctr, MirrorConfig, MirrorRule, RuleLoad, FLAG_ENABLED, MAX_RULES},
};

pub use rule::{Cidr, Ports, Proto, Rule, RuleError};

use crate::ebpf::{self, format_program_error, LoadError};

/// What to mirror, from where, to where.
#[derive(Clone, Debug)]
pub struct MirrorSpec {
    /// The primary's interface (ingress is mirrored).
    pub interface: String,
    /// The interface clones are sent out of (the host end of the shadow's veth).
    pub shadow_interface: String,
    /// The MAC address of the shadow's end, written as the clones' destination.
    pub shadow_mac: [u8; 6],
    pub rules: Vec<Rule>,
    /// Also attach the XDP load counters.
    pub xdp: bool,
}

/// How the TC program was attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TcMode {
    Tcx,
    Clsact,
}

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error(transparent)]
    Load(#[from] LoadError),
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
        }
    }
}

/// A running mirror. Dropping it detaches both programs.
pub struct Mirror {
    ebpf: Ebpf,
    spec: MirrorSpec,
    tc_mode: TcMode,
    xdp_mode: Option<XdpMode>,
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
        if spec.rules.len() > MAX_RULES as usize {
            return Err(MirrorError::TooManyRules {
                n: spec.rules.len(),
                max: MAX_RULES,
            });
        }
        ifindex(&spec.interface, "mirror.interface")?;
        let shadow_ifindex = ifindex(&spec.shadow_interface, "mirror.shadow_interface")?;
        let mut bpf = ebpf::MIRROR.open()?;

        // Policy first, so the programs never run with a half-written rule set.
        {
            let mut rules: Array<&mut MapData, MirrorRule> = map_mut(&mut bpf, MAP_MIRROR_RULES)?;
            for (i, r) in spec.rules.iter().enumerate() {
                rules
                    .set(i as u32, r.to_kernel(), 0)
                    .map_err(|source| MirrorError::Map {
                        map: MAP_MIRROR_RULES,
                        source,
                    })?;
            }
        }
        {
            let mut cfg: Array<&mut MapData, MirrorConfig> = map_mut(&mut bpf, MAP_MIRROR_CFG)?;
            let c = MirrorConfig {
                shadow_ifindex,
                n_rules: spec.rules.len() as u32,
                shadow_mac: spec.shadow_mac,
                flags: FLAG_ENABLED,
            };
            cfg.set(0, c, 0).map_err(|source| MirrorError::Map {
                map: MAP_MIRROR_CFG,
                source,
            })?;
        }

        let attach_err = |program, detail: String| MirrorError::Attach {
            program,
            interface: spec.interface.clone(),
            detail,
        };

        let xdp_mode = if spec.xdp {
            let prog: &mut Xdp = program_mut(&mut bpf, PROG_MIRROR_XDP)?;
            prog.load()
                .map_err(|e| attach_err(PROG_MIRROR_XDP, format_program_error(&e)))?;
            match prog.attach(&spec.interface, XdpMode::Default) {
                Ok(_) => Some(XdpMode::Default),
                Err(first) => {
                    tracing::debug!(error = %first, "native XDP attach failed; trying generic XDP");
                    prog.attach(&spec.interface, XdpMode::Skb)
                        .map_err(|e| attach_err(PROG_MIRROR_XDP, format_program_error(&e)))?;
                    Some(XdpMode::Skb)
                }
            }
        } else {
            None
        };

        let prog: &mut SchedClassifier = program_mut(&mut bpf, PROG_MIRROR_TC)?;
        prog.load()
            .map_err(|e| attach_err(PROG_MIRROR_TC, format_program_error(&e)))?;
        let tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
        let tc_mode = if tcx {
            prog.attach(&spec.interface, TcAttachType::Ingress)
                .map_err(|e| attach_err(PROG_MIRROR_TC, format_program_error(&e)))?;
            TcMode::Tcx
        } else {
            // Older kernels: the legacy clsact qdisc (it may already exist).
            if let Err(e) = tc::qdisc_add_clsact(&spec.interface) {
                tracing::debug!(error = %e, "clsact qdisc not added (may already exist)");
            }
            prog.attach(&spec.interface, TcAttachType::Ingress)
                .map_err(|e| attach_err(PROG_MIRROR_TC, format_program_error(&e)))?;
            TcMode::Clsact
        };
        tracing::info!(
            interface = %spec.interface,
            shadow = %spec.shadow_interface,
            rules = spec.rules.len(),
            ?tc_mode,
            ?xdp_mode,
            "mirror attached"
        );
        Ok(Mirror {
            ebpf: bpf,
            spec,
            tc_mode,
            xdp_mode,
        })
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
        for i in 0..self.spec.rules.len() as u32 {
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
