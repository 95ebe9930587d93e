//! Output Discard for one replica: the TC program that drops everything the replica sends
//! at the host end of its veth, and the cgroup programs that refuse its connects and sends
//! to destinations outside the allowlist.

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{CgroupAttachMode, CgroupSockAddr, SchedClassifier, TcAttachType},
    Ebpf,
};
use shadow_common::{
    discard::{ctr, AllowRule, Dest, DiscardConfig, FLAG_ALLOW_LOOPBACK, MAX_ALLOW},
    maps::{
        MAP_ALLOW_RULES, MAP_DISCARD_CFG, MAP_DISCARD_CTRS, MAP_REFUSED, PROG_CONNECT4,
        PROG_CONNECT6, PROG_DISCARD_TC, PROG_SENDMSG4, PROG_SENDMSG6,
    },
    mirror::{IPPROTO_TCP, IPPROTO_UDP},
};

use crate::{
    ebpf::{self, format_program_error, LoadError},
    mirror::{Proto, Rule},
};

#[derive(Debug, thiserror::Error)]
pub enum DiscardError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("{n} allowlist entries; at most {max} are supported")]
    TooManyRules { n: usize, max: u32 },
    #[error("opening cgroup directory {path}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("attaching {program} to {target}: {detail}")]
    Attach {
        program: &'static str,
        target: String,
        detail: String,
    },
    #[error("map {map}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// Counters of one replica's discard programs.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DiscardCounters {
    pub tx_dropped_packets: u64,
    pub tx_dropped_bytes: u64,
    pub connect_refused: u64,
    pub connect_allowed: u64,
    pub sendmsg_refused: u64,
    pub sendmsg_allowed: u64,
}

/// A destination a replica was refused, with how often.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Refused {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: &'static str,
    pub attempts: u64,
}

/// Policy for what a replica may reach.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Allowlist {
    pub rules: Vec<Rule>,
    /// Loopback stays inside the replica's own network namespace.
    pub loopback: bool,
}

fn to_allow_rule(r: &Rule) -> AllowRule {
    let k = r.to_kernel();
    AllowRule {
        addr: k.addr,
        family: k.family,
        prefix_len: k.prefix_len,
        proto: match r.proto {
            None => 0,
            Some(Proto::Tcp) => IPPROTO_TCP,
            Some(Proto::Udp) => IPPROTO_UDP,
        },
        _pad: 0,
        port_lo: k.port_lo,
        port_hi: k.port_hi,
    }
}

/// Attached discard programs of one replica; dropping it detaches them.
pub struct Discard {
    ebpf: Ebpf,
}

fn attach_err(
    program: &'static str,
    target: impl Into<String>,
) -> impl FnOnce(aya::programs::ProgramError) -> DiscardError {
    let target = target.into();
    move |e| DiscardError::Attach {
        program,
        target,
        detail: format_program_error(&e),
    }
}

impl Discard {
    /// Load and attach: TC ingress on `host_ifname` (an interface of the calling thread's
    /// network namespace) and the four sock_addr programs on the cgroup2 directory `cgroup2`.
    pub fn attach(
        host_ifname: &str,
        cgroup2: &Path,
        allow: &Allowlist,
    ) -> Result<Discard, DiscardError> {
        if allow.rules.len() > MAX_ALLOW as usize {
            return Err(DiscardError::TooManyRules {
                n: allow.rules.len(),
                max: MAX_ALLOW,
            });
        }
        let cg = File::open(cgroup2).map_err(|source| DiscardError::Cgroup {
            path: cgroup2.to_path_buf(),
            source,
        })?;
        let mut bpf = ebpf::DISCARD.open()?;
        {
            let map = bpf.map_mut(MAP_ALLOW_RULES).ok_or(LoadError::MissingMap {
                object: ebpf::DISCARD.name,
                map: MAP_ALLOW_RULES,
            })?;
            let mut rules: Array<&mut MapData, AllowRule> =
                Array::try_from(map).map_err(|source| DiscardError::Map {
                    map: MAP_ALLOW_RULES,
                    source,
                })?;
            for (i, r) in allow.rules.iter().enumerate() {
                rules
                    .set(i as u32, to_allow_rule(r), 0)
                    .map_err(|source| DiscardError::Map {
                        map: MAP_ALLOW_RULES,
                        source,
                    })?;
            }
        }
        {
            let map = bpf.map_mut(MAP_DISCARD_CFG).ok_or(LoadError::MissingMap {
                object: ebpf::DISCARD.name,
                map: MAP_DISCARD_CFG,
            })?;
            let mut cfg: Array<&mut MapData, DiscardConfig> =
                Array::try_from(map).map_err(|source| DiscardError::Map {
                    map: MAP_DISCARD_CFG,
                    source,
                })?;
            let c = DiscardConfig {
                n_allow: allow.rules.len() as u32,
                flags: if allow.loopback {
                    FLAG_ALLOW_LOOPBACK
                } else {
                    0
                },
            };
            cfg.set(0, c, 0).map_err(|source| DiscardError::Map {
                map: MAP_DISCARD_CFG,
                source,
            })?;
        }
        // The cgroup hooks first: once the replica's packets are dropped it must not be
        // able to reach anything else either.
        for name in [PROG_CONNECT4, PROG_CONNECT6, PROG_SENDMSG4, PROG_SENDMSG6] {
            let prog: &mut CgroupSockAddr = program(&mut bpf, name)?;
            prog.load()
                .map_err(attach_err(name, cgroup2.display().to_string()))?;
            prog.attach(&cg, CgroupAttachMode::Single)
                .map_err(attach_err(name, cgroup2.display().to_string()))?;
        }
        let prog: &mut SchedClassifier = program(&mut bpf, PROG_DISCARD_TC)?;
        prog.load()
            .map_err(attach_err(PROG_DISCARD_TC, host_ifname))?;
        // After the mirror's `shadow_learn` on the same hook (TCX: it is put first; clsact:
        // its priority is lower), which must see what is dropped here.
        let mode = crate::mirror::TcMode::detect();
        prog.attach_with_options(
            host_ifname,
            TcAttachType::Ingress,
            mode.options(host_ifname, false, crate::mirror::PRIO_DISCARD),
        )
        .map_err(attach_err(PROG_DISCARD_TC, host_ifname))?;
        Ok(Discard { ebpf: bpf })
    }

    pub fn counters(&self) -> Result<DiscardCounters, DiscardError> {
        let map = self
            .ebpf
            .map(MAP_DISCARD_CTRS)
            .ok_or(LoadError::MissingMap {
                object: ebpf::DISCARD.name,
                map: MAP_DISCARD_CTRS,
            })?;
        let ctrs: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).map_err(|source| DiscardError::Map {
                map: MAP_DISCARD_CTRS,
                source,
            })?;
        let get = |i: u32| -> Result<u64, DiscardError> {
            Ok(ctrs
                .get(&i, 0)
                .map_err(|source| DiscardError::Map {
                    map: MAP_DISCARD_CTRS,
                    source,
                })?
                .iter()
                .sum())
        };
        Ok(DiscardCounters {
            tx_dropped_packets: get(ctr::TX_DROPPED)?,
            tx_dropped_bytes: get(ctr::TX_DROPPED_BYTES)?,
            connect_refused: get(ctr::CONNECT_REFUSED)?,
            connect_allowed: get(ctr::CONNECT_ALLOWED)?,
            sendmsg_refused: get(ctr::SENDMSG_REFUSED)?,
            sendmsg_allowed: get(ctr::SENDMSG_ALLOWED)?,
        })
    }

    /// Refused destinations, most attempts first.
    pub fn refused(&self) -> Result<Vec<Refused>, DiscardError> {
        let map = self.ebpf.map(MAP_REFUSED).ok_or(LoadError::MissingMap {
            object: ebpf::DISCARD.name,
            map: MAP_REFUSED,
        })?;
        let refused: HashMap<&MapData, Dest, u64> =
            HashMap::try_from(map).map_err(|source| DiscardError::Map {
                map: MAP_REFUSED,
                source,
            })?;
        let mut out = Vec::new();
        for item in refused.iter() {
            let (d, n) = item.map_err(|source| DiscardError::Map {
                map: MAP_REFUSED,
                source,
            })?;
            let addr = if d.family == 4 {
                IpAddr::V4(Ipv4Addr::new(d.addr[0], d.addr[1], d.addr[2], d.addr[3]))
            } else {
                IpAddr::V6(Ipv6Addr::from(d.addr))
            };
            out.push(Refused {
                addr,
                port: d.port,
                proto: match d.proto {
                    IPPROTO_TCP => "tcp",
                    IPPROTO_UDP => "udp",
                    _ => "other",
                },
                attempts: n,
            });
        }
        out.sort_by_key(|r| std::cmp::Reverse(r.attempts));
        Ok(out)
    }
}

fn program<'a, P>(bpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, DiscardError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = bpf.program_mut(name).ok_or(LoadError::MissingProgram {
        object: ebpf::DISCARD.name,
        program: name,
    })?;
    prog.try_into().map_err(|source| {
        LoadError::ProgramType {
            object: ebpf::DISCARD.name,
            program: name,
            source,
        }
        .into()
    })
}
