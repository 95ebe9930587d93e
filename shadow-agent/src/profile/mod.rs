//! Resource profiler: per-cgroup on-CPU time from `sched_switch`, accounted in the kernel.
//!
//! The hook is chosen at run time: tp_btf (BTF-typed tracepoint) when the kernel accepts it,
//! the raw tracepoint otherwise. `Profiler::hook` reports which one serves the metric.

use std::collections::HashMap;

use aya::{
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray},
    programs::{BtfTracePoint, RawTracePoint},
    Btf, Ebpf,
};
use shadow_common::{
    acct::{CgroupAcct, MAX_TRACKED, SLOT_OTHER},
    maps::{MAP_ACCT, MAP_ACCT_CGROUPS, PROG_SCHED_BTF, PROG_SCHED_RAW},
};

use crate::ebpf::{self, format_program_error, LoadError};

/// The kernel hook that feeds on-CPU accounting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CpuHook {
    /// `tp_btf/sched_switch`.
    TpBtf,
    /// `raw_tracepoint/sched_switch`.
    RawTracepoint,
}

/// Which hooks to try, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookPreference {
    /// tp_btf, then the raw tracepoint.
    Auto,
    /// Only the raw tracepoint (used to exercise the fallback).
    RawOnly,
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("attaching {program}: {detail}")]
    Attach {
        program: &'static str,
        detail: String,
    },
    #[error("map {map}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("already tracking {max} cgroups, the most the profiler holds")]
    Full { max: u32 },
}

/// A running profiler. Dropping it detaches the program.
pub struct Profiler {
    ebpf: Ebpf,
    hook: CpuHook,
    /// Fallback reasons, in order, when the preferred hook was not used.
    fallbacks: Vec<String>,
    slots: HashMap<u64, u32>,
}

fn attach_btf(ebpf: &mut Ebpf) -> Result<(), String> {
    let btf = Btf::from_sys_fs().map_err(|e| format!("kernel BTF: {e}"))?;
    let prog: &mut BtfTracePoint = ebpf
        .program_mut(PROG_SCHED_BTF)
        .ok_or("program missing")?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| e.to_string())?;
    prog.load("sched_switch", &btf)
        .map_err(|e| format_program_error(&e))?;
    prog.attach().map_err(|e| format_program_error(&e))?;
    Ok(())
}

fn attach_raw(ebpf: &mut Ebpf) -> Result<(), String> {
    let prog: &mut RawTracePoint = ebpf
        .program_mut(PROG_SCHED_RAW)
        .ok_or("program missing")?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| e.to_string())?;
    prog.load().map_err(|e| format_program_error(&e))?;
    prog.attach("sched_switch")
        .map_err(|e| format_program_error(&e))?;
    Ok(())
}

impl Profiler {
    /// Load and attach the CPU accounting with the best hook this kernel offers.
    pub fn start(pref: HookPreference) -> Result<Profiler, ProfileError> {
        let mut ebpf = ebpf::ACCT.open()?;
        let mut fallbacks = Vec::new();
        let hook = if pref == HookPreference::Auto {
            match attach_btf(&mut ebpf) {
                Ok(()) => Some(CpuHook::TpBtf),
                Err(e) => {
                    tracing::warn!(error = %e, "tp_btf/sched_switch unavailable; falling back to the raw tracepoint");
                    fallbacks.push(format!("{PROG_SCHED_BTF}: {e}"));
                    None
                }
            }
        } else {
            None
        };
        let hook = match hook {
            Some(h) => h,
            None => {
                attach_raw(&mut ebpf).map_err(|detail| ProfileError::Attach {
                    program: PROG_SCHED_RAW,
                    detail,
                })?;
                CpuHook::RawTracepoint
            }
        };
        tracing::info!(?hook, "profiler attached");
        Ok(Profiler {
            ebpf,
            hook,
            fallbacks,
            slots: HashMap::new(),
        })
    }

    pub fn hook(&self) -> CpuHook {
        self.hook
    }

    pub fn fallbacks(&self) -> &[String] {
        &self.fallbacks
    }

    /// Start charging `cgroup_id` (a cgroup2 id) to its own slot. Idempotent.
    pub fn track(&mut self, cgroup_id: u64) -> Result<u32, ProfileError> {
        if let Some(&slot) = self.slots.get(&cgroup_id) {
            return Ok(slot);
        }
        let slot = (1..MAX_TRACKED)
            .find(|s| !self.slots.values().any(|v| v == s))
            .ok_or(ProfileError::Full {
                max: MAX_TRACKED - 1,
            })?;
        // Zero the slot first: it may hold counts of a cgroup tracked before.
        let mut acct = self.acct_map_mut()?;
        let zeros = aya::maps::PerCpuValues::try_from(vec![
            CgroupAcct::default();
            aya::util::nr_cpus().map_err(
                |(_, e)| ProfileError::Map {
                    map: MAP_ACCT,
                    source: aya::maps::MapError::IoError(e),
                }
            )?
        ])
        .map_err(|e| ProfileError::Map {
            map: MAP_ACCT,
            source: aya::maps::MapError::IoError(e),
        })?;
        acct.set(slot, zeros, 0)
            .map_err(|source| ProfileError::Map {
                map: MAP_ACCT,
                source,
            })?;
        let map = self
            .ebpf
            .map_mut(MAP_ACCT_CGROUPS)
            .ok_or(LoadError::MissingMap {
                object: ebpf::ACCT.name,
                map: MAP_ACCT_CGROUPS,
            })?;
        let mut cgroups: BpfHashMap<&mut MapData, u64, u32> =
            BpfHashMap::try_from(map).map_err(|source| ProfileError::Map {
                map: MAP_ACCT_CGROUPS,
                source,
            })?;
        cgroups
            .insert(cgroup_id, slot, 0)
            .map_err(|source| ProfileError::Map {
                map: MAP_ACCT_CGROUPS,
                source,
            })?;
        self.slots.insert(cgroup_id, slot);
        Ok(slot)
    }

    fn acct_map_mut(&mut self) -> Result<PerCpuArray<&mut MapData, CgroupAcct>, ProfileError> {
        let map = self.ebpf.map_mut(MAP_ACCT).ok_or(LoadError::MissingMap {
            object: ebpf::ACCT.name,
            map: MAP_ACCT,
        })?;
        PerCpuArray::try_from(map).map_err(|source| ProfileError::Map {
            map: MAP_ACCT,
            source,
        })
    }

    fn read_slot(&self, slot: u32) -> Result<CgroupAcct, ProfileError> {
        let map = self.ebpf.map(MAP_ACCT).ok_or(LoadError::MissingMap {
            object: ebpf::ACCT.name,
            map: MAP_ACCT,
        })?;
        let acct: PerCpuArray<&MapData, CgroupAcct> =
            PerCpuArray::try_from(map).map_err(|source| ProfileError::Map {
                map: MAP_ACCT,
                source,
            })?;
        let vals = acct.get(&slot, 0).map_err(|source| ProfileError::Map {
            map: MAP_ACCT,
            source,
        })?;
        Ok(vals.iter().fold(CgroupAcct::default(), |a, v| CgroupAcct {
            cpu_ns: a.cpu_ns + v.cpu_ns,
            switches: a.switches + v.switches,
        }))
    }

    /// Accounting of a tracked cgroup since `track`, summed over CPUs; `None` if untracked.
    pub fn cgroup(&self, cgroup_id: u64) -> Result<Option<CgroupAcct>, ProfileError> {
        match self.slots.get(&cgroup_id) {
            Some(&slot) => self.read_slot(slot).map(Some),
            None => Ok(None),
        }
    }

    /// Everything charged to cgroups that are not tracked (idle excluded).
    pub fn other(&self) -> Result<CgroupAcct, ProfileError> {
        self.read_slot(SLOT_OTHER)
    }
}
