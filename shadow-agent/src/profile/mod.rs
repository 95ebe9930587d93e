//! Resource profiler: per-cgroup CPU time, run-queue latency, page faults, block IO,
//! network and process exec/exit, accounted in the kernel (`shadow-acct`), plus memory and
//! pressure from cgroupfs, sampled at fixed intervals into a bounded store.
//!
//! Every metric has an ordered list of candidate hooks; the first that loads and attaches
//! serves it, and [`Profiler::hooks`] reports the choice and why earlier candidates failed.
//!
//! | metric | candidates, in order |
//! |---|---|
//! | cpu | tp_btf sched_switch, raw tracepoint sched_switch |
//! | run-queue latency | the cpu hook (switch-in, preemption) + tp_btf sched_wakeup, sched_wakeup_new (pid offset from BTF), classic tracepoints |
//! | page faults | kretprobe handle_mm_fault (splits majors), tp_btf page_fault_user, raw page_fault_user |
//! | block IO | classic tracepoint block_bio_queue |
//! | exec / exit | tp_btf sched_process_exec/exit, raw tracepoints |
//! | network | cgroup_skb ingress/egress on each tracked cgroup2 directory |

pub mod btf;
pub mod cgroupfs;
pub mod cli;
pub mod events;
pub mod hist;
pub mod sampler;
pub mod tracefs;
pub mod watch;

use std::{collections::HashMap, fs::File, os::unix::fs::MetadataExt as _, path::Path};

use aya::{
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuValues},
    programs::{
        cgroup_skb::CgroupSkbLinkId, BtfTracePoint, CgroupAttachMode, CgroupSkb,
        CgroupSkbAttachType, KProbe, Program, RawTracePoint, TracePoint,
    },
    Btf, Ebpf, EbpfLoader,
};
use shadow_common::{
    acct::{err, CgroupAcct, CpuState, RqHist, MAX_TRACKED, RQ_BUCKETS, SLOT_OTHER},
    maps::{
        GLOBAL_BIO_NSECT_OFF, GLOBAL_BIO_RWBS_OFF, GLOBAL_CFS_RQ_RQ_OFF, GLOBAL_CGROUP_KN_OFF,
        GLOBAL_CSS_SET_DFL_OFF, GLOBAL_KN_ID_OFF, GLOBAL_NEXT_CG_ON, GLOBAL_RQ_CLOCK_OFF,
        GLOBAL_RQ_SCHED_INFO, GLOBAL_TASK_CGROUPS_OFF, GLOBAL_TASK_LAST_QUEUED_OFF,
        GLOBAL_TASK_PID_OFF, GLOBAL_TASK_SE_CFS_RQ_OFF, GLOBAL_WAKE_PID_OFF, MAP_ACCT,
        MAP_ACCT_CGROUPS, MAP_ACCT_ERRS, MAP_ACCT_EVENTS, MAP_ACCT_GEN, MAP_ACCT_LAST, MAP_RQ_HIST,
        PROG_BIO_TP, PROG_EXEC_BTF, PROG_EXEC_RAW, PROG_EXIT_BTF, PROG_EXIT_RAW, PROG_FAULT_BTF,
        PROG_FAULT_KRET, PROG_FAULT_RAW, PROG_SCHED_BTF, PROG_SCHED_NOP, PROG_SCHED_RAW,
        PROG_SKB_IN, PROG_SKB_OUT, PROG_WAKEUP_BTF, PROG_WAKEUP_NEW_BTF, PROG_WAKEUP_NEW_TP,
        PROG_WAKEUP_TP,
    },
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

/// Kinds of kernel hook a metric can be served by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HookKind {
    TpBtf,
    RawTracepoint,
    /// Classic (tracefs) tracepoint.
    Tracepoint,
    Kretprobe,
    CgroupSkb,
}

/// What the profiler measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Cpu,
    RunqLatency,
    PageFaults,
    BlockIo,
    ProcEvents,
    Network,
}

/// Which hook serves one metric, and why the candidates before it were not used.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct HookReport {
    pub metric: Metric,
    /// `None`: no candidate worked, the metric is not measured.
    pub hook: Option<HookKind>,
    /// Programs serving it (e.g. `sched_sw_btf`).
    pub programs: Vec<&'static str>,
    /// `program: reason` for each candidate that failed, in order.
    pub fallbacks: Vec<String>,
    /// Caveats of the chosen hook on this kernel.
    pub note: Option<String>,
}

/// Which hooks to try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookPreference {
    /// Every candidate, best first (kprobe, tp_btf, raw/classic tracepoint).
    Auto,
    /// Only raw and classic tracepoints (exercises the fallbacks).
    RawOnly,
}

/// Where run-queue latency comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RqSource {
    /// The scheduler's own timestamps (`task->sched_info.last_queued` against `rq->clock`),
    /// read by the sched_switch handler, where the kernel's BTF has them (kernels with
    /// `CONFIG_SCHED_INFO` and `CONFIG_FAIR_GROUP_SCHED`); the wakeup hooks otherwise.
    Auto,
    /// The wakeup hooks, as on a kernel without those fields (exercises that fallback).
    WakeupHooks,
}

/// The offsets of `task_struct.sched_info.last_queued`, `task_struct.se.cfs_rq`,
/// `cfs_rq.rq` and `rq.clock` in the kernel's BTF.
fn sched_info_offsets(b: &btf::Btf) -> Result<[u32; 4], btf::BtfError> {
    Ok([
        b.struct_member("task_struct", "sched_info", "sched_info")?
            + b.int_member_sized("sched_info", "last_queued", 8)?,
        b.struct_member("task_struct", "se", "sched_entity")?
            + b.ptr_member("sched_entity", "cfs_rq")?,
        b.ptr_member("cfs_rq", "rq")?,
        b.int_member_sized("rq", "clock", 8)?,
    ])
}

/// Loads the profiler's object (`shadow-acct`) with `loader`.
fn load_acct(loader: &mut EbpfLoader) -> Result<Ebpf, ProfileError> {
    let obj = &ebpf::ACCT;
    if obj.is_stub() {
        return Err(LoadError::Stub { object: obj.name }.into());
    }
    loader.load(obj.bytes).map_err(|e| {
        LoadError::Parse {
            object: obj.name,
            source: Box::new(e),
        }
        .into()
    })
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
    #[error("{path} is not a cgroup directory")]
    NotACgroup {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("counting CPUs")]
    Cpus {
        #[source]
        source: std::io::Error,
    },
    #[error("{reason}")]
    Usage { reason: String },
    #[error("async runtime")]
    Runtime {
        #[source]
        source: std::io::Error,
    },
    #[error("the exec/exit ring buffer was already taken")]
    EventsTaken,
    #[error("watching the exec/exit ring buffer")]
    Events {
        #[source]
        source: std::io::Error,
    },
}

/// A tracked cgroup: its slot and, when tracked by directory, its network links.
struct Tracked {
    slot: u32,
    skb_links: Vec<(&'static str, CgroupSkbLinkId)>,
    /// Descendant cgroup ids charged to this slot too ([`Profiler::set_descendants`]).
    descendants: Vec<u64>,
}

/// A running profiler. Dropping it detaches every program.
pub struct Profiler {
    ebpf: Ebpf,
    hook: CpuHook,
    reports: Vec<HookReport>,
    /// Whether the cgroup_skb programs loaded (network accounting is possible).
    skb_loaded: bool,
    slots: HashMap<u64, Tracked>,
    nr_cpus: usize,
}

/// An empty tp_btf sched_switch program, attached until dropped: the profiler benchmark's
/// peer, the cost of any sched_switch hook on this kernel before its body does anything.
pub struct EmptySwitchHook {
    _ebpf: Ebpf,
}

impl EmptySwitchHook {
    pub fn attach() -> Result<EmptySwitchHook, ProfileError> {
        let btf = Btf::from_sys_fs().ok();
        let mut ebpf = load_acct(EbpfLoader::new().btf(btf.as_ref()))?;
        attach_btf(&mut ebpf, btf.as_ref(), PROG_SCHED_NOP, "sched_switch").map_err(|detail| {
            ProfileError::Attach {
                program: PROG_SCHED_NOP,
                detail,
            }
        })?;
        Ok(EmptySwitchHook { _ebpf: ebpf })
    }
}

type Attempt = Result<(), String>;

fn prog_err(e: &aya::programs::ProgramError) -> String {
    format_program_error(e)
}

fn attach_btf(ebpf: &mut Ebpf, btf: Option<&Btf>, program: &str, target: &str) -> Attempt {
    let btf = btf.ok_or("kernel BTF (/sys/kernel/btf/vmlinux) unavailable")?;
    let prog: &mut BtfTracePoint = ebpf
        .program_mut(program)
        .ok_or("program missing")?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| e.to_string())?;
    prog.load(target, btf).map_err(|e| prog_err(&e))?;
    prog.attach().map_err(|e| prog_err(&e))?;
    Ok(())
}

fn attach_raw(ebpf: &mut Ebpf, program: &str, tp: &str) -> Attempt {
    let prog: &mut RawTracePoint = ebpf
        .program_mut(program)
        .ok_or("program missing")?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| e.to_string())?;
    prog.load().map_err(|e| prog_err(&e))?;
    prog.attach(tp).map_err(|e| prog_err(&e))?;
    Ok(())
}

/// Attach two programs that only work together; if the second fails, the first is unloaded
/// (which detaches it) so a fallback pair can take over without counting twice.
fn attach_pair(
    ebpf: &mut Ebpf,
    first: &str,
    second: &str,
    attach: impl Fn(&mut Ebpf, &str) -> Attempt,
) -> Attempt {
    attach(ebpf, first)?;
    attach(ebpf, second).inspect_err(|_| {
        let r = match ebpf.program_mut(first) {
            Some(Program::BtfTracePoint(p)) => p.unload(),
            Some(Program::TracePoint(p)) => p.unload(),
            _ => Ok(()),
        };
        if let Err(e) = r {
            tracing::warn!(program = first, error = %e, "unloading after a failed pair");
        }
    })
}

fn attach_tp(ebpf: &mut Ebpf, program: &str, category: &str, name: &str) -> Attempt {
    let prog: &mut TracePoint = ebpf
        .program_mut(program)
        .ok_or("program missing")?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| e.to_string())?;
    prog.load().map_err(|e| prog_err(&e))?;
    prog.attach(category, name).map_err(|e| prog_err(&e))?;
    Ok(())
}

/// Runtime probe for kprobes: the PMU must exist, then load and attach must succeed.
fn attach_kretprobe(ebpf: &mut Ebpf, program: &str, function: &str) -> Attempt {
    let prog: &mut KProbe = ebpf
        .program_mut(program)
        .ok_or("program missing")?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| e.to_string())?;
    prog.load().map_err(|e| prog_err(&e))?;
    let pmu = Path::new("/sys/bus/event_source/devices/kprobe/type");
    let probe_note = if pmu.exists() {
        String::new()
    } else {
        format!(" ({} missing: kprobes are not available)", pmu.display())
    };
    prog.attach(function, 0)
        .map_err(|e| format!("{}{probe_note}", prog_err(&e)))?;
    Ok(())
}

/// One candidate hook of a metric.
#[derive(Clone, Copy)]
enum Candidate {
    Btf(&'static str, &'static str),
    Raw(&'static str, &'static str),
    Kret(&'static str, &'static str),
}

impl Candidate {
    fn program(self) -> &'static str {
        match self {
            Candidate::Btf(p, _) | Candidate::Raw(p, _) | Candidate::Kret(p, _) => p,
        }
    }

    fn kind(self) -> HookKind {
        match self {
            Candidate::Btf(..) => HookKind::TpBtf,
            Candidate::Raw(..) => HookKind::RawTracepoint,
            Candidate::Kret(..) => HookKind::Kretprobe,
        }
    }

    fn allowed(self, pref: HookPreference) -> bool {
        match pref {
            HookPreference::Auto => true,
            HookPreference::RawOnly => matches!(self, Candidate::Raw(..)),
        }
    }

    fn attach(self, ebpf: &mut Ebpf, btf: Option<&Btf>) -> Attempt {
        match self {
            Candidate::Btf(p, t) => attach_btf(ebpf, btf, p, t),
            Candidate::Raw(p, t) => attach_raw(ebpf, p, t),
            Candidate::Kret(p, f) => attach_kretprobe(ebpf, p, f),
        }
    }
}

/// Candidates of each metric served by one program, best first.
const CPU_CANDIDATES: [Candidate; 2] = [
    Candidate::Btf(PROG_SCHED_BTF, "sched_switch"),
    Candidate::Raw(PROG_SCHED_RAW, "sched_switch"),
];
const FAULT_CANDIDATES: [Candidate; 3] = [
    Candidate::Kret(PROG_FAULT_KRET, "handle_mm_fault"),
    Candidate::Btf(PROG_FAULT_BTF, "page_fault_user"),
    Candidate::Raw(PROG_FAULT_RAW, "page_fault_user"),
];
const EXEC_CANDIDATES: [Candidate; 2] = [
    Candidate::Btf(PROG_EXEC_BTF, "sched_process_exec"),
    Candidate::Raw(PROG_EXEC_RAW, "sched_process_exec"),
];
const EXIT_CANDIDATES: [Candidate; 2] = [
    Candidate::Btf(PROG_EXIT_BTF, "sched_process_exit"),
    Candidate::Raw(PROG_EXIT_RAW, "sched_process_exit"),
];

/// Try `candidates` in order; the first that attaches wins.
fn attach_first(
    ebpf: &mut Ebpf,
    btf: Option<&Btf>,
    pref: HookPreference,
    candidates: &[Candidate],
    fallbacks: &mut Vec<String>,
) -> Option<Candidate> {
    for &c in candidates.iter().filter(|c| c.allowed(pref)) {
        match c.attach(ebpf, btf) {
            Ok(()) => return Some(c),
            Err(e) => {
                tracing::info!(program = c.program(), error = %e, "hook unavailable, trying the next");
                fallbacks.push(format!("{}: {e}", c.program()));
            }
        }
    }
    None
}

/// Load-time globals: record offsets of the classic tracepoints, from tracefs.
struct Offsets {
    wake_pid: u32,
    bio_nsect: u32,
    bio_rwbs: u32,
}

fn read_offsets() -> Result<Offsets, tracefs::TracefsError> {
    let dir = tracefs::tracefs_dir()?;
    let wake = tracefs::field_in(&dir, "sched", "sched_wakeup", "pid")?;
    let wake_new = tracefs::field_in(&dir, "sched", "sched_wakeup_new", "pid")?;
    if wake != wake_new {
        // Both share one event class on every kernel so far; one global serves both.
        return Err(tracefs::TracefsError::NoField {
            path: dir.join("events/sched/sched_wakeup_new/format"),
            field: "pid (at the same offset as sched_wakeup's)",
        });
    }
    let nsect = tracefs::field_in(&dir, "block", "block_bio_queue", "nr_sector")?;
    let rwbs = tracefs::field_in(&dir, "block", "block_bio_queue", "rwbs")?;
    Ok(Offsets {
        wake_pid: wake.offset,
        bio_nsect: nsect.offset,
        bio_rwbs: rwbs.offset,
    })
}

impl Profiler {
    /// Load the profiler and attach every metric with the best hook this kernel offers.
    /// Fails only when CPU accounting cannot be attached; other metrics degrade and say so
    /// in [`Profiler::hooks`].
    pub fn start(pref: HookPreference) -> Result<Profiler, ProfileError> {
        Self::start_with(pref, RqSource::Auto)
    }

    /// [`Profiler::start`], choosing where run-queue latency comes from.
    pub fn start_with(pref: HookPreference, rq: RqSource) -> Result<Profiler, ProfileError> {
        if ebpf::ACCT.is_stub() {
            return Err(LoadError::Stub {
                object: ebpf::ACCT.name,
            }
            .into());
        }
        let btf = Btf::from_sys_fs().ok();
        let offsets = read_offsets();
        let kernel_btf = btf::Btf::kernel();
        // Offset of task_struct.pid for the tp_btf wakeup programs and the idle check of
        // the switched-in task.
        let task_pid = kernel_btf
            .as_ref()
            .map_err(ToString::to_string)
            .and_then(|b| {
                b.int_member_sized("task_struct", "pid", 4)
                    .map_err(|e| e.to_string())
            });
        // The chain from a task to its cgroup2 id, so sched_switch can record which cgroup
        // the CPU runs from then on (its running slice is added at read time).
        let next_cg = task_pid.clone().and_then(|_| {
            let b = kernel_btf.as_ref().map_err(ToString::to_string)?;
            let chain = || -> Result<[u32; 4], btf::BtfError> {
                Ok([
                    b.ptr_member("task_struct", "cgroups")?,
                    b.ptr_member("css_set", "dfl_cgrp")?,
                    b.ptr_member("cgroup", "kn")?,
                    b.int_member_sized("kernfs_node", "id", 8)?,
                ])
            };
            chain().map_err(|e| e.to_string())
        });
        // Run-queue waits from the scheduler's own timestamps, read at sched_switch.
        let sched_info = match rq {
            RqSource::WakeupHooks => Err("not chosen (RqSource::WakeupHooks)".to_owned()),
            RqSource::Auto => task_pid.clone().and_then(|_| {
                let b = kernel_btf.as_ref().map_err(ToString::to_string)?;
                sched_info_offsets(b).map_err(|e| e.to_string())
            }),
        };
        let mut loader = EbpfLoader::new();
        loader.btf(btf.as_ref());
        if let Ok([queued, se_cfs_rq, cfs_rq_rq, clock]) = &sched_info {
            loader
                .override_global(GLOBAL_RQ_SCHED_INFO, &1u32, true)
                .override_global(GLOBAL_TASK_LAST_QUEUED_OFF, queued, true)
                .override_global(GLOBAL_TASK_SE_CFS_RQ_OFF, se_cfs_rq, true)
                .override_global(GLOBAL_CFS_RQ_RQ_OFF, cfs_rq_rq, true)
                .override_global(GLOBAL_RQ_CLOCK_OFF, clock, true);
        }
        if let Ok(off) = &task_pid {
            loader.override_global(GLOBAL_TASK_PID_OFF, off, true);
        }
        if let Ok([cgroups, dfl, kn, id]) = &next_cg {
            loader
                .override_global(GLOBAL_NEXT_CG_ON, &1u32, true)
                .override_global(GLOBAL_TASK_CGROUPS_OFF, cgroups, true)
                .override_global(GLOBAL_CSS_SET_DFL_OFF, dfl, true)
                .override_global(GLOBAL_CGROUP_KN_OFF, kn, true)
                .override_global(GLOBAL_KN_ID_OFF, id, true);
        }
        if let Ok(o) = &offsets {
            loader
                .override_global(GLOBAL_WAKE_PID_OFF, &o.wake_pid, true)
                .override_global(GLOBAL_BIO_NSECT_OFF, &o.bio_nsect, true)
                .override_global(GLOBAL_BIO_RWBS_OFF, &o.bio_rwbs, true);
        }
        let mut ebpf = load_acct(&mut loader)?;
        let btf = btf.as_ref();
        let mut reports = Vec::new();

        // CPU (mandatory).
        let mut fb = Vec::new();
        let cpu =
            attach_first(&mut ebpf, btf, pref, &CPU_CANDIDATES, &mut fb).ok_or_else(|| {
                ProfileError::Attach {
                    program: PROG_SCHED_RAW,
                    detail: fb.join("; "),
                }
            })?;
        let hook = if cpu.kind() == HookKind::TpBtf {
            CpuHook::TpBtf
        } else {
            CpuHook::RawTracepoint
        };
        if !fb.is_empty() {
            tracing::warn!(fallbacks = ?fb, "sched_switch: preferred hook unavailable");
        }
        if let Err(e) = &next_cg {
            tracing::warn!(error = %e, "sched_switch: running slices counted only once switched out");
        }
        reports.push(HookReport {
            metric: Metric::Cpu,
            hook: Some(cpu.kind()),
            programs: vec![cpu.program()],
            fallbacks: fb,
            note: next_cg.as_ref().err().map(|e| {
                format!("running slices are counted only once switched out (no task-to-cgroup offsets: {e})")
            }),
        });

        // Run-queue latency: from sched_info at the switch itself where the kernel's BTF has
        // it. Otherwise switch-in and preemption come with the CPU hook and wakeups need the
        // woken pid: `task->pid` of the tp_btf argument (offset from the kernel's BTF,
        // checked by the verifier), or the `pid` field of the classic tracepoints (offset
        // from tracefs) as the fallback.
        let mut fb = Vec::new();
        let mut progs = vec![cpu.program()];
        let mut wake_hook = None;
        if let Err(e) = &sched_info {
            if rq == RqSource::Auto {
                tracing::info!(error = %e, "sched_info unavailable, run-queue latency from wakeups");
            }
            fb.push(format!("sched_info: {e}"));
        }
        if sched_info.is_ok() {
            reports.push(HookReport {
                metric: Metric::RunqLatency,
                hook: Some(cpu.kind()),
                programs: progs.clone(),
                fallbacks: fb.clone(),
                note: Some(
                    "enqueue (wakeup or preemption) to switch-in, from the scheduler's own \
                     sched_info timestamps read at sched_switch; no wakeup hook"
                        .to_owned(),
                ),
            });
        }
        if sched_info.is_err() && pref == HookPreference::Auto {
            let r = match &task_pid {
                Err(e) => Err(format!("task_struct.pid offset: {e}")),
                Ok(_) => attach_pair(&mut ebpf, PROG_WAKEUP_BTF, PROG_WAKEUP_NEW_BTF, |e, p| {
                    let tp = if p == PROG_WAKEUP_BTF {
                        "sched_wakeup"
                    } else {
                        "sched_wakeup_new"
                    };
                    attach_btf(e, btf, p, tp)
                }),
            };
            match r {
                Ok(()) => {
                    progs.extend([PROG_WAKEUP_BTF, PROG_WAKEUP_NEW_BTF]);
                    wake_hook = Some(HookKind::TpBtf);
                }
                Err(e) => {
                    tracing::info!(error = %e, "tp_btf wakeups unavailable, trying the tracepoints");
                    fb.push(format!("{PROG_WAKEUP_BTF}: {e}"));
                }
            }
        }
        if sched_info.is_err() && wake_hook.is_none() {
            let r = match &offsets {
                Err(e) => Err(format!("tracepoint offsets: {e}")),
                Ok(_) => attach_pair(&mut ebpf, PROG_WAKEUP_TP, PROG_WAKEUP_NEW_TP, |e, p| {
                    let tp = if p == PROG_WAKEUP_TP {
                        "sched_wakeup"
                    } else {
                        "sched_wakeup_new"
                    };
                    attach_tp(e, p, "sched", tp)
                }),
            };
            match r {
                Ok(()) => {
                    progs.extend([PROG_WAKEUP_TP, PROG_WAKEUP_NEW_TP]);
                    wake_hook = Some(HookKind::Tracepoint);
                }
                Err(e) => fb.push(format!("{PROG_WAKEUP_TP}: {e}")),
            }
        }
        if sched_info.is_err() {
            reports.push(HookReport {
                metric: Metric::RunqLatency,
                hook: Some(wake_hook.unwrap_or(cpu.kind())),
                programs: progs,
                fallbacks: fb,
                note: wake_hook.is_none().then(|| {
                    "wakeups unavailable: only waits after preemption are measured".to_owned()
                }),
            });
        }

        // Page faults.
        let mut fb = Vec::new();
        let fault = attach_first(&mut ebpf, btf, pref, &FAULT_CANDIDATES, &mut fb);
        reports.push(HookReport {
            metric: Metric::PageFaults,
            hook: fault.map(Candidate::kind),
            programs: fault.map(Candidate::program).into_iter().collect(),
            fallbacks: fb,
            note: match fault.map(Candidate::kind) {
                Some(HookKind::Kretprobe) => Some(
                    "every handle_mm_fault call (kernel-mode faults on user memory included); \
                     majors from VM_FAULT_MAJOR"
                        .to_owned(),
                ),
                Some(_) => Some(
                    "user-mode fault entries, minor and major together; the major count comes \
                     from the memory controller's pgmajfault"
                        .to_owned(),
                ),
                None => None,
            },
        });

        // Block IO.
        let mut fb = Vec::new();
        let bio = match &offsets {
            Err(e) => Err(format!("tracepoint offsets: {e}")),
            Ok(_) => attach_tp(&mut ebpf, PROG_BIO_TP, "block", "block_bio_queue"),
        };
        if let Err(e) = &bio {
            fb.push(format!("{PROG_BIO_TP}: {e}"));
        }
        reports.push(HookReport {
            metric: Metric::BlockIo,
            hook: bio.is_ok().then_some(HookKind::Tracepoint),
            programs: if bio.is_ok() {
                vec![PROG_BIO_TP]
            } else {
                vec![]
            },
            fallbacks: fb,
            note: Some(
                "bios charged to the submitting task's cgroup: direct IO to the writer, \
                 buffered writeback to the kworker (\"other\"); a bio split by the block layer \
                 is counted again for its remainder"
                    .to_owned(),
            ),
        });

        // exec / exit.
        let mut fb = Vec::new();
        let exec = attach_first(&mut ebpf, btf, pref, &EXEC_CANDIDATES, &mut fb);
        let exit = attach_first(&mut ebpf, btf, pref, &EXIT_CANDIDATES, &mut fb);
        reports.push(HookReport {
            metric: Metric::ProcEvents,
            hook: exec.or(exit).map(Candidate::kind),
            programs: exec
                .into_iter()
                .chain(exit)
                .map(Candidate::program)
                .collect(),
            fallbacks: fb,
            note: None,
        });

        // Network: load now, attach per tracked cgroup directory.
        let mut fb = Vec::new();
        for p in [PROG_SKB_IN, PROG_SKB_OUT] {
            let r: Attempt = (|| {
                let prog: &mut CgroupSkb = ebpf
                    .program_mut(p)
                    .ok_or("program missing")?
                    .try_into()
                    .map_err(|e: aya::programs::ProgramError| e.to_string())?;
                prog.load().map_err(|e| prog_err(&e))
            })();
            if let Err(e) = r {
                fb.push(format!("{p}: {e}"));
            }
        }
        let skb_loaded = fb.is_empty();
        reports.push(HookReport {
            metric: Metric::Network,
            hook: skb_loaded.then_some(HookKind::CgroupSkb),
            programs: if skb_loaded {
                vec![PROG_SKB_IN, PROG_SKB_OUT]
            } else {
                vec![]
            },
            fallbacks: fb,
            note: Some(
                "attached to cgroups tracked by directory; IP packet lengths, charged to the \
                 socket's cgroup"
                    .to_owned(),
            ),
        });

        let nr_cpus = aya::util::nr_cpus().map_err(|(_, source)| ProfileError::Cpus { source })?;
        tracing::info!(?hook, "profiler attached");
        Ok(Profiler {
            ebpf,
            hook,
            reports,
            skb_loaded,
            slots: HashMap::new(),
            nr_cpus,
        })
    }

    /// The hook serving CPU accounting.
    pub fn hook(&self) -> CpuHook {
        self.hook
    }

    /// Fallback reasons of the CPU hook, in order, when the preferred hook was not used.
    pub fn fallbacks(&self) -> &[String] {
        self.report(Metric::Cpu).map_or(&[], |r| &r.fallbacks)
    }

    /// Which hook serves each metric.
    pub fn hooks(&self) -> &[HookReport] {
        &self.reports
    }

    /// The report of one metric.
    pub fn report(&self, metric: Metric) -> Option<&HookReport> {
        self.reports.iter().find(|r| r.metric == metric)
    }

    fn map_err(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> ProfileError {
        move |source| ProfileError::Map { map, source }
    }

    /// `ACCT_CGROUPS`: cgroup id -> slot.
    fn slot_map(&mut self) -> Result<BpfHashMap<&mut MapData, u64, u32>, ProfileError> {
        let map = self
            .ebpf
            .map_mut(MAP_ACCT_CGROUPS)
            .ok_or(Self::missing(MAP_ACCT_CGROUPS))?;
        BpfHashMap::try_from(map).map_err(Self::map_err(MAP_ACCT_CGROUPS))
    }

    fn missing(map: &'static str) -> ProfileError {
        LoadError::MissingMap {
            object: ebpf::ACCT.name,
            map,
        }
        .into()
    }

    /// Start charging `cgroup_id` (a cgroup2 id) to its own slot (CPU, run-queue latency,
    /// faults, block IO, exec/exit; not network, see [`Profiler::track_dir`]). Idempotent.
    pub fn track(&mut self, cgroup_id: u64) -> Result<u32, ProfileError> {
        if let Some(t) = self.slots.get(&cgroup_id) {
            return Ok(t.slot);
        }
        // Tracked itself from now on, no longer as an ancestor's descendant (the insert
        // below replaces its entry).
        for t in self.slots.values_mut() {
            t.descendants.retain(|d| *d != cgroup_id);
        }
        let slot = (1..MAX_TRACKED)
            .find(|s| !self.slots.values().any(|t| t.slot == *s))
            .ok_or(ProfileError::Full {
                max: MAX_TRACKED - 1,
            })?;
        // Zero the slot first: it may hold counts of a cgroup tracked before.
        let n = self.nr_cpus;
        let cpus = |source| ProfileError::Cpus { source };
        {
            let map = self.ebpf.map_mut(MAP_ACCT).ok_or(Self::missing(MAP_ACCT))?;
            let mut acct: PerCpuArray<&mut MapData, CgroupAcct> =
                PerCpuArray::try_from(map).map_err(Self::map_err(MAP_ACCT))?;
            let zeros = PerCpuValues::try_from(vec![CgroupAcct::default(); n]).map_err(cpus)?;
            acct.set(slot, zeros, 0).map_err(Self::map_err(MAP_ACCT))?;
        }
        {
            let map = self
                .ebpf
                .map_mut(MAP_RQ_HIST)
                .ok_or(Self::missing(MAP_RQ_HIST))?;
            let mut hist: PerCpuArray<&mut MapData, RqHist> =
                PerCpuArray::try_from(map).map_err(Self::map_err(MAP_RQ_HIST))?;
            let zeros = PerCpuValues::try_from(vec![RqHist::default(); n]).map_err(cpus)?;
            hist.set(slot, zeros, 0)
                .map_err(Self::map_err(MAP_RQ_HIST))?;
        }
        let mut cgroups = self.slot_map()?;
        cgroups
            .insert(cgroup_id, slot, 0)
            .map_err(Self::map_err(MAP_ACCT_CGROUPS))?;
        self.bump_generation()?;
        self.slots.insert(
            cgroup_id,
            Tracked {
                slot,
                skb_links: Vec::new(),
                descendants: Vec::new(),
            },
        );
        Ok(slot)
    }

    /// Track the cgroup2 directory `dir` (everything [`Profiler::track`] does) and attach the
    /// network programs to it. Returns the cgroup id. Idempotent.
    pub fn track_dir(&mut self, dir: &Path) -> Result<u64, ProfileError> {
        let not_cg = |source| ProfileError::NotACgroup {
            path: dir.to_owned(),
            source,
        };
        std::fs::metadata(dir.join("cgroup.procs")).map_err(not_cg)?;
        let id = std::fs::metadata(dir).map_err(not_cg)?.ino();
        self.track(id)?;
        let already = self.slots.get(&id).is_some_and(|t| !t.skb_links.is_empty());
        if !self.skb_loaded || already {
            return Ok(id);
        }
        let file = File::open(dir).map_err(not_cg)?;
        let mut links = Vec::new();
        for (p, ty) in [
            (PROG_SKB_IN, CgroupSkbAttachType::Ingress),
            (PROG_SKB_OUT, CgroupSkbAttachType::Egress),
        ] {
            let prog: &mut CgroupSkb = self
                .ebpf
                .program_mut(p)
                .ok_or(LoadError::MissingProgram {
                    object: ebpf::ACCT.name,
                    program: p,
                })?
                .try_into()
                .map_err(|source| LoadError::ProgramType {
                    object: ebpf::ACCT.name,
                    program: p,
                    source,
                })?;
            let link = prog
                // A bpf_link (kernel >= 5.7) coexists with other programs whatever the mode;
                // link_create refuses the ALLOW_MULTI flag, so pass none.
                .attach(&file, ty, CgroupAttachMode::Single)
                .map_err(|e| ProfileError::Attach {
                    program: p,
                    detail: format!("{}: {}", dir.display(), prog_err(&e)),
                })?;
            links.push((p, link));
        }
        if let Some(t) = self.slots.get_mut(&id) {
            t.skb_links = links;
        }
        Ok(id)
    }

    /// Charge the cgroups `ids` (below `cgroup_id`, found by the caller) to `cgroup_id`'s
    /// slot as well, in place of the previous set: a cgroup's CPU, run-queue latency,
    /// faults and IO then include its children's, as cgroup2's own counters (memory,
    /// `cpu.stat`) do. Ids tracked themselves keep their own slot. With the map full, the
    /// ids that did not fit are left out and reported.
    pub fn set_descendants(&mut self, cgroup_id: u64, ids: &[u64]) -> Result<(), ProfileError> {
        let Some(t) = self.slots.get(&cgroup_id) else {
            return Ok(());
        };
        let slot = t.slot;
        let mut want: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|id| *id != cgroup_id && !self.slots.contains_key(id))
            .collect();
        want.sort_unstable();
        want.dedup();
        if want == t.descendants {
            return Ok(());
        }
        let old = t.descendants.clone();
        let mut cgroups = self.slot_map()?;
        let mut kept = Vec::with_capacity(want.len());
        let mut failed = None;
        for id in &want {
            if old.binary_search(id).is_ok() {
                kept.push(*id);
                continue;
            }
            match cgroups.insert(*id, slot, 0) {
                Ok(()) => kept.push(*id),
                Err(source) => {
                    failed.get_or_insert(source);
                }
            }
        }
        for id in old.iter().filter(|id| want.binary_search(id).is_err()) {
            // (An id tracked itself now has its own entry: `want` never holds it, and it is
            // no longer in `old` either, see `track`.)
            match cgroups.remove(id) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(source) => {
                    failed.get_or_insert(source);
                }
            }
        }
        if let Some(t) = self.slots.get_mut(&cgroup_id) {
            t.descendants = kept;
        }
        self.bump_generation()?;
        match failed {
            None => Ok(()),
            Some(source) => Err(ProfileError::Map {
                map: MAP_ACCT_CGROUPS,
                source,
            }),
        }
    }

    /// Stop tracking `cgroup_id` (and its descendants): their events go to "other" again,
    /// network links detach.
    pub fn untrack(&mut self, cgroup_id: u64) -> Result<(), ProfileError> {
        if self.slots.contains_key(&cgroup_id) {
            self.set_descendants(cgroup_id, &[])?;
        }
        let Some(t) = self.slots.remove(&cgroup_id) else {
            return Ok(());
        };
        for (p, link) in t.skb_links {
            if let Some(prog) = self.ebpf.program_mut(p) {
                let prog: Result<&mut CgroupSkb, _> = prog.try_into();
                if let Ok(prog) = prog {
                    let _ = prog.detach(link);
                }
            }
        }
        let mut cgroups = self.slot_map()?;
        match cgroups.remove(&cgroup_id) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(source) => {
                return Err(ProfileError::Map {
                    map: MAP_ACCT_CGROUPS,
                    source,
                })
            }
        }
        self.bump_generation()
    }

    /// Tell the sched_switch handlers that `ACCT_CGROUPS` changed: their per-CPU
    /// cgroup-to-slot caches are stale from now (`acct::CpuState`).
    fn bump_generation(&mut self) -> Result<(), ProfileError> {
        let map = self
            .ebpf
            .map_mut(MAP_ACCT_GEN)
            .ok_or(Self::missing(MAP_ACCT_GEN))?;
        let mut gen: Array<&mut MapData, u64> =
            Array::try_from(map).map_err(Self::map_err(MAP_ACCT_GEN))?;
        let next = gen.get(&0, 0).map_err(Self::map_err(MAP_ACCT_GEN))? + 1;
        gen.set(0, next, 0).map_err(Self::map_err(MAP_ACCT_GEN))
    }

    /// The tracked cgroup ids.
    pub fn tracked(&self) -> Vec<u64> {
        self.slots.keys().copied().collect()
    }

    fn read_slot(&self, slot: u32) -> Result<CgroupAcct, ProfileError> {
        let map = self.ebpf.map(MAP_ACCT).ok_or(Self::missing(MAP_ACCT))?;
        let acct: PerCpuArray<&MapData, CgroupAcct> =
            PerCpuArray::try_from(map).map_err(Self::map_err(MAP_ACCT))?;
        let vals = acct.get(&slot, 0).map_err(Self::map_err(MAP_ACCT))?;
        Ok(vals.iter().fold(CgroupAcct::default(), |a, v| a.add(v)))
    }

    fn read_cpu_state(&self) -> Result<Vec<CpuState>, ProfileError> {
        let map = self
            .ebpf
            .map(MAP_ACCT_LAST)
            .ok_or(Self::missing(MAP_ACCT_LAST))?;
        let last: PerCpuArray<&MapData, CpuState> =
            PerCpuArray::try_from(map).map_err(Self::map_err(MAP_ACCT_LAST))?;
        let vals = last.get(&0, 0).map_err(Self::map_err(MAP_ACCT_LAST))?;
        Ok(vals.iter().copied().collect())
    }

    /// Accounting of a tracked cgroup since `track`, summed over CPUs; `None` if untracked.
    ///
    /// CPU time includes the running slices of the cgroup's tasks that are on a CPU now:
    /// sched_switch charges a slice when it ends, and a lone busy task on an otherwise idle
    /// CPU may run for seconds without one. The counters and the per-CPU slice starts are
    /// read as one consistent snapshot (retried while a switch updates them), so the total
    /// never runs ahead of what the next switch charges.
    pub fn cgroup(&self, cgroup_id: u64) -> Result<Option<CgroupAcct>, ProfileError> {
        let Some(t) = self.slots.get(&cgroup_id) else {
            return Ok(None);
        };
        let mut acct = CgroupAcct::default();
        for _ in 0..4 {
            let before = self.read_cpu_state()?;
            acct = self.read_slot(t.slot)?;
            let after = self.read_cpu_state()?;
            // A slice in progress in the cgroup or one of its charged descendants.
            let ours = |cg: u64| cg == cgroup_id || t.descendants.binary_search(&cg).is_ok();
            if let Some(running) = running_ns(&before, &after, ours, monotonic_ns()) {
                acct.cpu_ns += running;
                break;
            }
        }
        Ok(Some(acct))
    }

    /// Everything charged to cgroups that are not tracked (idle excluded).
    pub fn other(&self) -> Result<CgroupAcct, ProfileError> {
        self.read_slot(SLOT_OTHER)
    }

    /// Cumulative run-queue latency buckets of a tracked cgroup (log2 ns), summed over CPUs.
    pub fn rq_buckets(&self, cgroup_id: u64) -> Result<Option<hist::Buckets>, ProfileError> {
        let Some(t) = self.slots.get(&cgroup_id) else {
            return Ok(None);
        };
        let map = self
            .ebpf
            .map(MAP_RQ_HIST)
            .ok_or(Self::missing(MAP_RQ_HIST))?;
        let h: PerCpuArray<&MapData, RqHist> =
            PerCpuArray::try_from(map).map_err(Self::map_err(MAP_RQ_HIST))?;
        let vals = h.get(&t.slot, 0).map_err(Self::map_err(MAP_RQ_HIST))?;
        let mut out = [0u64; RQ_BUCKETS];
        for v in vals.iter() {
            for (o, b) in out.iter_mut().zip(v.buckets.iter()) {
                *o += b;
            }
        }
        Ok(Some(out))
    }

    /// The kernel side's error counters (`acct::err::*`), summed over CPUs.
    pub fn kernel_errors(&self) -> Result<KernelErrors, ProfileError> {
        let map = self
            .ebpf
            .map(MAP_ACCT_ERRS)
            .ok_or(Self::missing(MAP_ACCT_ERRS))?;
        let a: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).map_err(Self::map_err(MAP_ACCT_ERRS))?;
        let sum = |i: u32| -> Result<u64, ProfileError> {
            Ok(a.get(&i, 0)
                .map_err(Self::map_err(MAP_ACCT_ERRS))?
                .iter()
                .sum())
        };
        Ok(KernelErrors {
            ringbuf_full: sum(err::RINGBUF_FULL)?,
            rq_tasks_full: sum(err::RQ_TASKS_FULL)?,
            tracepoint_read: sum(err::TP_READ)?,
        })
    }

    /// Take the exec/exit ring buffer (once); read it with [`events::ProcEvents::spawn`].
    pub fn take_events(&mut self) -> Result<events::ProcEvents, ProfileError> {
        let map = self
            .ebpf
            .take_map(MAP_ACCT_EVENTS)
            .ok_or(ProfileError::EventsTaken)?;
        let ring = aya::maps::RingBuf::try_from(map).map_err(Self::map_err(MAP_ACCT_EVENTS))?;
        Ok(events::ProcEvents::new(ring))
    }
}

/// Events the kernel side could not record (cumulative, summed over CPUs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelErrors {
    /// exec/exit events dropped because the ring buffer was full.
    pub ringbuf_full: u64,
    /// Tasks whose run-queue latency could not be followed (map full).
    pub rq_tasks_full: u64,
    /// Tracepoint fields that could not be read.
    pub tracepoint_read: u64,
}

/// `CLOCK_MONOTONIC` in ns, the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// Time the CPUs have been running tasks of `cgroup_id` since their last switch, at `now`,
/// from two reads of the per-CPU switch state taken around a read of the counters; `None`
/// when a switch was under way or happened in between (the counters and the slice starts
/// may then disagree).
fn running_ns(
    before: &[CpuState],
    after: &[CpuState],
    ours: impl Fn(u64) -> bool,
    now: u64,
) -> Option<u64> {
    if before.len() != after.len() {
        return None;
    }
    let mut sum = 0u64;
    for (b, a) in before.iter().zip(after) {
        if b.seq % 2 == 1 || b.seq != a.seq {
            return None;
        }
        if ours(a.running_cg) && a.last_ns != 0 {
            sum += now.saturating_sub(a.last_ns);
        }
    }
    Some(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(seq: u32, last_ns: u64, running_cg: u64) -> CpuState {
        CpuState {
            last_ns,
            seq,
            running_cg,
            ..CpuState::default()
        }
    }

    #[test]
    fn running_slices_of_the_cgroup_are_added() {
        let s = [cpu(4, 1_000, 7), cpu(2, 1_500, 9), cpu(6, 1_200, 7)];
        assert_eq!(running_ns(&s, &s, |c| c == 7, 2_000), Some(1_000 + 800));
        assert_eq!(running_ns(&s, &s, |c| c == 9, 2_000), Some(500));
        assert_eq!(running_ns(&s, &s, |c| c == 3, 2_000), Some(0));
        // A CPU that never switched, or idle (cgroup 0), adds nothing.
        let s = [cpu(0, 0, 7), cpu(2, 1_000, 0)];
        assert_eq!(running_ns(&s, &s, |c| c == 7, 2_000), Some(0));
        // Slices of descendants count for a cgroup that is charged them.
        let s = [cpu(4, 1_000, 7), cpu(2, 1_500, 9), cpu(6, 1_200, 11)];
        let desc = [9u64, 11];
        let ours = |c: u64| c == 7 || desc.binary_search(&c).is_ok();
        assert_eq!(running_ns(&s, &s, ours, 2_000), Some(1_000 + 500 + 800));
    }

    #[test]
    fn a_switch_during_the_read_asks_for_a_reread() {
        let before = [cpu(4, 1_000, 7), cpu(2, 1_500, 9)];
        // Under way (odd) when read first.
        let odd = [cpu(5, 1_000, 7), cpu(2, 1_500, 9)];
        assert_eq!(running_ns(&odd, &odd, |c| c == 7, 2_000), None);
        // Finished in between.
        let after = [cpu(6, 1_900, 9), cpu(2, 1_500, 9)];
        assert_eq!(running_ns(&before, &after, |c| c == 7, 2_000), None);
        assert_eq!(running_ns(&before, &before[..1], |c| c == 7, 2_000), None);
    }
}
