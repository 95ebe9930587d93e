//! The eBPF objects built by `build.rs`, embedded in the agent, and their loading.

use aya::{
    programs::{Program, ProgramError, ProgramType},
    sys::{is_helper_supported, BpfHelper},
    Btf, Ebpf, EbpfError,
};

/// One embedded eBPF object (one binary of `shadow-ebpf`).
#[derive(Clone, Copy, Debug)]
pub struct Object {
    pub name: &'static str,
    pub bytes: &'static [u8],
}

/// The mirror: TC clone program and XDP load counters.
pub static MIRROR: Object = Object {
    name: "shadow-mirror",
    bytes: aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/shadow-mirror")),
};

/// The profiler: per-cgroup accounting from scheduler tracepoints.
pub static ACCT: Object = Object {
    name: "shadow-acct",
    bytes: aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/shadow-acct")),
};

/// Output Discard: drop at the replica's veth, refuse connects and sends from its cgroup.
pub static DISCARD: Object = Object {
    name: "shadow-discard",
    bytes: aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/shadow-discard")),
};

/// Every object the agent embeds.
pub static ALL: [&Object; 3] = [&MIRROR, &ACCT, &DISCARD];

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "eBPF object {object} is an empty stub: this agent was built without bpf-linker; \
         run `cargo xtask setup` and rebuild"
    )]
    Stub { object: &'static str },
    #[error("parsing eBPF object {object}")]
    Parse {
        object: &'static str,
        #[source]
        source: Box<EbpfError>,
    },
    #[error("eBPF object {object} has no program {program}")]
    MissingProgram {
        object: &'static str,
        program: &'static str,
    },
    #[error("eBPF object {object} has no map {map}")]
    MissingMap {
        object: &'static str,
        map: &'static str,
    },
    #[error("program {program} of {object} has an unexpected type")]
    ProgramType {
        object: &'static str,
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("loading program {program} of {object} into the kernel")]
    Program {
        object: &'static str,
        program: String,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("reading kernel BTF (/sys/kernel/btf/vmlinux)")]
    Btf {
        #[source]
        source: aya::BtfError,
    },
    #[error("map {map} of {object}")]
    Map {
        object: &'static str,
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

impl Object {
    /// Whether the build embedded an empty stub instead of the real object.
    pub fn is_stub(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Parse the object and create its maps (no program is loaded yet).
    pub fn open(&self) -> Result<Ebpf, LoadError> {
        if self.is_stub() {
            return Err(LoadError::Stub { object: self.name });
        }
        Ebpf::load(self.bytes).map_err(|e| LoadError::Parse {
            object: self.name,
            source: Box::new(e),
        })
    }
}

/// A BPF helper that a program calls and that older kernels lack. The agent probes for it
/// before loading (aya's `is_helper_supported`: a two-instruction program calling it, as
/// libbpf probes), so a kernel without it gets one sentence naming the helper, the release
/// that brought it and what needs it, rather than a verifier log ("unknown func").
#[derive(Clone, Copy, Debug)]
pub struct HelperNeed {
    pub helper: BpfHelper,
    /// The helper's name in the kernel's documentation.
    pub name: &'static str,
    pub program_type: ProgramType,
    /// First mainline release with the helper (distribution kernels may have backported it:
    /// the probe, not the version, decides).
    pub since: &'static str,
    /// What needs it, for the error.
    pub used_by: &'static str,
    /// What the user can do about it besides a newer kernel.
    pub instead: &'static str,
}

/// The mirror's TC programs: the masking's chunk walk and the TCP options walk run under
/// `bpf_loop`.
pub const MIRROR_TC_NEEDS: &[HelperNeed] = &[HelperNeed {
    helper: BpfHelper::BPF_FUNC_loop,
    name: "bpf_loop",
    program_type: ProgramType::SchedClassifier,
    since: "5.17",
    used_by: "the mirror's TC programs (masking, TCP options)",
    instead: "leave out the [mirror] section (the profiler, the shadow group and the \
              allocator run from Linux 5.15)",
}];

/// The mirror's XDP load counters (`[mirror] xdp = true`) read the frame's first bytes
/// with `bpf_xdp_load_bytes`, which also works on multi-buffer frames.
pub const MIRROR_XDP_NEEDS: &[HelperNeed] = &[
    HelperNeed {
        helper: BpfHelper::BPF_FUNC_xdp_get_buff_len,
        name: "bpf_xdp_get_buff_len",
        program_type: ProgramType::Xdp,
        since: "5.18",
        used_by: "the mirror's XDP load counters (mirror.xdp = true)",
        instead: "set mirror.xdp = false (the TC program counts the primary's load too)",
    },
    HelperNeed {
        helper: BpfHelper::BPF_FUNC_xdp_load_bytes,
        name: "bpf_xdp_load_bytes",
        program_type: ProgramType::Xdp,
        since: "5.18",
        used_by: "the mirror's XDP load counters (mirror.xdp = true)",
        instead: "set mirror.xdp = false (the TC program counts the primary's load too)",
    },
];

/// Helpers of [`HelperNeed`] lists that this kernel does not offer.
#[derive(Debug, thiserror::Error)]
#[error("{}", describe_missing(.kernel, .missing))]
pub struct MissingHelpers {
    /// `uname -r`.
    pub kernel: String,
    pub missing: Vec<HelperNeed>,
}

fn describe_missing(kernel: &str, missing: &[HelperNeed]) -> String {
    let parts: Vec<String> = missing
        .iter()
        .map(|n| {
            format!(
                "the BPF helper {} (Linux {}+), which {} need; run on Linux {} or newer, or {}",
                n.name, n.since, n.used_by, n.since, n.instead
            )
        })
        .collect();
    format!("this kernel ({kernel}) lacks {}", parts.join("; and "))
}

/// [`probe_helpers`] for a mirror: its TC programs' helpers, and its XDP program's when
/// `xdp` (what `run` checks before loading, and `check-config` for a `[mirror]` section).
pub fn probe_mirror_helpers(xdp: bool) -> Result<(), MissingHelpers> {
    let mut needs = MIRROR_TC_NEEDS.to_vec();
    if xdp {
        needs.extend_from_slice(MIRROR_XDP_NEEDS);
    }
    probe_helpers(&needs)
}

/// Probe every helper of `needs`. A probe that cannot decide (the probe program itself
/// cannot be loaded, e.g. without CAP_BPF) does not count as missing: the real load then
/// reports what is wrong.
pub fn probe_helpers(needs: &[HelperNeed]) -> Result<(), MissingHelpers> {
    let missing: Vec<HelperNeed> = needs
        .iter()
        .filter(|n| matches!(is_helper_supported(n.program_type, n.helper), Ok(false)))
        .copied()
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(MissingHelpers {
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|r| r.trim().to_string())
            .unwrap_or_else(|_| "release unknown".to_string()),
        missing,
    })
}

/// The tracepoint name a tp_btf program attaches to: the section `tp_btf/<name>`.
fn btf_target(program: &str) -> &'static str {
    match program {
        shadow_common::maps::PROG_SCHED_BTF | shadow_common::maps::PROG_SCHED_NOP => "sched_switch",
        shadow_common::maps::PROG_WAKEUP_BTF => "sched_wakeup",
        shadow_common::maps::PROG_WAKEUP_NEW_BTF => "sched_wakeup_new",
        shadow_common::maps::PROG_FAULT_BTF => "page_fault_user",
        shadow_common::maps::PROG_EXEC_BTF => "sched_process_exec",
        shadow_common::maps::PROG_EXIT_BTF => "sched_process_exit",
        _ => "",
    }
}

/// Outcome of loading one program for the verifier check.
#[derive(Debug)]
pub struct VerifyResult {
    pub object: &'static str,
    pub program: String,
    /// `None` when the verifier accepted it; otherwise the error with the verifier log.
    pub error: Option<String>,
    /// Instructions the verifier processed (the kernel's `verified_insns`, counted against
    /// its limit of [`VERIFIER_INSN_LIMIT`]; `None` when rejected or not reported).
    pub verified_insns: Option<u32>,
    /// Wall time of the load, verification included.
    pub load_ms: f64,
}

/// The verifier's limit on processed instructions per program (`BPF_COMPLEXITY_LIMIT_INSNS`).
pub const VERIFIER_INSN_LIMIT: u32 = 1_000_000;

/// Load every program of `obj` into the kernel, without attaching any. Returns one result
/// per program; a rejection carries the verifier log.
pub fn verify_object(obj: &Object) -> Result<Vec<VerifyResult>, LoadError> {
    let mut ebpf = obj.open()?;
    let mut btf = None;
    let mut out = Vec::new();
    for (name, prog) in ebpf.programs_mut() {
        let t0 = std::time::Instant::now();
        let res = match prog {
            Program::SchedClassifier(p) => p.load(),
            Program::Xdp(p) => p.load(),
            Program::RawTracePoint(p) => p.load(),
            Program::BtfTracePoint(p) => {
                if btf.is_none() {
                    btf = Some(Btf::from_sys_fs().map_err(|source| LoadError::Btf { source })?);
                }
                p.load(btf_target(name), btf.as_ref().expect("set above"))
            }
            Program::TracePoint(p) => p.load(),
            Program::KProbe(p) => p.load(),
            Program::CgroupSkb(p) => p.load(),
            Program::CgroupSockAddr(p) => p.load(),
            other => {
                out.push(VerifyResult {
                    object: obj.name,
                    program: name.to_string(),
                    error: Some(format!(
                        "program type {:?} is not handled by the verifier check",
                        other.prog_type()
                    )),
                    verified_insns: None,
                    load_ms: 0.0,
                });
                continue;
            }
        };
        let load_ms = t0.elapsed().as_secs_f64() * 1e3;
        let verified_insns = res
            .is_ok()
            .then(|| prog.info().ok()?.verified_instruction_count())
            .flatten();
        out.push(VerifyResult {
            object: obj.name,
            program: name.to_string(),
            error: res.err().map(|e| format_program_error(&e)),
            verified_insns,
            load_ms,
        });
    }
    Ok(out)
}

/// Render a program error with its verifier log, when there is one.
pub fn format_program_error(e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => format!("{io_error}\nverifier log:\n{verifier_log}"),
        other => crate::error::chain(other),
    }
}
