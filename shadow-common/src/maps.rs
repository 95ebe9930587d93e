//! Names of every map and program, defined once. The kernel truncates object names to
//! 15 characters, so each is checked at compile time.

macro_rules! names {
    ($($(#[$m:meta])* $id:ident = $val:literal;)*) => {
        $(
            $(#[$m])*
            pub const $id: &str = $val;
            const _: () = assert!($val.len() <= 15, concat!(stringify!($id), " is longer than 15 bytes"));
        )*
    };
}

names! {
    /// TC ingress program on the primary's interface: select, clone, redirect.
    PROG_MIRROR_TC = "shadow_mirror";
    /// XDP program on the primary's interface: earliest per-rule load accounting.
    PROG_MIRROR_XDP = "shadow_load";
    /// sched_switch through tp_btf (preferred hook).
    PROG_SCHED_BTF = "sched_sw_btf";
    /// sched_switch through a raw tracepoint (fallback when BTF tracing is unavailable).
    PROG_SCHED_RAW = "sched_sw_raw";
    /// tp_btf sched_switch with an empty body: the profiler benchmark's peer.
    PROG_SCHED_NOP = "sched_sw_nop";
    /// tp_btf sched_wakeup: the woken task starts waiting (run-queue latency; preferred).
    PROG_WAKEUP_BTF = "sched_wake_btf";
    /// tp_btf sched_wakeup_new: a new task of a tracked cgroup starts waiting (preferred).
    PROG_WAKEUP_NEW_BTF = "sched_wknew_btf";
    /// Classic tracepoint sched/sched_wakeup: the woken pid starts waiting (fallback).
    PROG_WAKEUP_TP = "sched_wakeup_tp";
    /// Classic tracepoint sched/sched_wakeup_new: a new task of a tracked cgroup starts waiting
    /// (fallback).
    PROG_WAKEUP_NEW_TP = "sched_wknew_tp";
    /// Page faults: kretprobe on handle_mm_fault (preferred where kprobes exist; tells major).
    PROG_FAULT_KRET = "pgfault_kret";
    /// Page faults: tp_btf exceptions/page_fault_user (fallback 1).
    PROG_FAULT_BTF = "pgfault_btf";
    /// Page faults: raw tracepoint page_fault_user (fallback 2).
    PROG_FAULT_RAW = "pgfault_raw";
    /// Block IO: classic tracepoint block/block_bio_queue (submitter's context).
    PROG_BIO_TP = "blk_bio_tp";
    /// Process exec through tp_btf / raw tracepoint sched_process_exec.
    PROG_EXEC_BTF = "proc_exec_btf";
    PROG_EXEC_RAW = "proc_exec_raw";
    /// Process exit through tp_btf / raw tracepoint sched_process_exit.
    PROG_EXIT_BTF = "proc_exit_btf";
    PROG_EXIT_RAW = "proc_exit_raw";
    /// cgroup_skb ingress / egress on tracked cgroup2 directories: network bytes and packets.
    PROG_SKB_IN = "cg_skb_in";
    PROG_SKB_OUT = "cg_skb_out";

    /// `Array<MirrorConfig>`, one entry.
    MAP_MIRROR_CFG = "MIRROR_CFG";
    /// `Array<MirrorTarget>`, `MAX_TARGETS` entries; `MirrorConfig::n_targets` are live.
    MAP_MIRROR_TARGETS = "MIRROR_TARGETS";
    /// `LruHashMap<FlowKey, FlowTarget>`: the target each mirrored flow was assigned to.
    MAP_MIRROR_FLOWS = "MIRROR_FLOWS";
    /// `PerCpuArray<u64>`, `MAX_TARGETS` entries: flows assigned to each target.
    MAP_TARGET_FLOWS = "TARGET_FLOWS";
    /// `Array<MirrorRule>`, `RULE_SLOTS` entries; `MirrorConfig::n_rules` from
    /// `MirrorConfig::rule_base` on are live.
    MAP_MIRROR_RULES = "MIRROR_RULES";
    /// `PerCpuArray<u64>`, indexed by `mirror::ctr::*`.
    MAP_MIRROR_CTRS = "MIRROR_CTRS";
    /// `PerCpuArray<RuleLoad>`, one entry per rule slot, written by the XDP program.
    MAP_RULE_LOAD = "RULE_LOAD";
    /// TC egress program on the shadow interface: masks the clones.
    PROG_MIRROR_MASK = "shadow_mask";
    /// `Array<MaskSpec>`, one entry.
    MAP_MASK_SPEC = "MASK_SPEC";
    /// `Array<MaskRule>`, one entry per rule slot.
    MAP_MASK_RULES = "MASK_RULES";
    /// `LruHashMap<FlowKey, HttpState>`: per-flow parser state across segments.
    MAP_MASK_FLOWS = "MASK_FLOWS";
    /// `PerCpuArray<u64>`, one entry per rule slot: clones with bytes masked.
    MAP_MASK_RULE_CTRS = "MASK_RULE_CTRS";
    /// `Array<[u8; MASK_FILL_LEN]>`, one entry: the fill byte repeated, written by the
    /// agent; the bulk fill of the "mask" fallback stores from it.
    MAP_MASK_FILL = "MASK_FILL";
    /// `Array<PseudoConfig>`, one entry: source-address pseudonymisation of the clones.
    MAP_PSEUDO_CFG = "PSEUDO_CFG";
    /// `PerCpuArray<MaskScratch>`: the egress program's working buffer.
    MAP_MASK_SCRATCH = "MASK_SCRATCH";
    /// TC egress on the primary's interface: learns the primary's ISN (SYN-ACK) and FIN of
    /// tracked TCP sessions.
    PROG_MIRROR_ISN = "shadow_isn";
    /// TC ingress on the shadow interface (before `shadow_discard`): learns the shadow's ISN,
    /// SND.NXT, TSval and resets from what it transmits.
    PROG_MIRROR_LEARN = "shadow_learn";
    /// `LruHashMap<FlowKey, TcpFlow>`: per-session TCP translation state.
    MAP_TCP_FLOWS = "TCP_FLOWS";
    /// `LruHashMap<FlowKey, LatPending>`: the unanswered request of each mirrored flow.
    MAP_LAT_PENDING = "LAT_PENDING";
    /// `PerCpuArray<LatHist>`, `MAX_TARGETS` entries: request→reply latency per target.
    MAP_LAT_HIST = "LAT_HIST";
    /// TC egress on the shadow interface, before `shadow_mask`: the TCP session part of each
    /// clone (translation, hold) and the decision for segments back from the hold loop.
    PROG_MIRROR_TCP = "shadow_tcp";
    /// `Array<TcpHoldConfig>`, one entry: the hold loop for early TCP segments.
    MAP_TCP_HOLD = "TCP_HOLD";
    /// TC ingress on the far end of the hold loop's veth: sends each held segment back to
    /// its flow's shadow interface, where `shadow_mask` decides again.
    PROG_MIRROR_HOLD = "shadow_hold";
    /// `Array<TokenBucket>`, one entry: the global clone rate cap.
    MAP_MIRROR_TB = "MIRROR_TB";

    /// `HashMap<u64 cgroup id, u32 slot>`: the cgroups the profiler tracks.
    MAP_ACCT_CGROUPS = "ACCT_CGROUPS";
    /// `PerCpuArray<CgroupAcct>`, indexed by slot; slot 0 is "everything else".
    MAP_ACCT = "ACCT";
    /// `PerCpuArray<acct::CpuState>`: time of the last context switch on this CPU, the
    /// cgroup of the task running since, and the cgroup-to-slot cache.
    MAP_ACCT_LAST = "ACCT_LAST";
    /// `Array<u64>`, one entry: generation of `ACCT_CGROUPS`, bumped by the agent after every
    /// change (invalidates the per-CPU slot caches).
    MAP_ACCT_GEN = "ACCT_GEN";
    /// `PerCpuArray<RqHist>`, indexed by slot: run-queue latency log2 histograms.
    MAP_RQ_HIST = "RQ_HIST";
    /// `LruHashMap<u32 pid, TaskRq>`: when each followed task became runnable.
    MAP_RQ_TASKS = "RQ_TASKS";
    /// `RingBuf` of `ProcEvent` (exec/exit of tracked cgroups).
    MAP_ACCT_EVENTS = "ACCT_EVENTS";
    /// `PerCpuArray<u64>`, indexed by `acct::err::*`.
    MAP_ACCT_ERRS = "ACCT_ERRS";

    /// Global (rodata) `u32`: byte offset of `pid` in `struct task_struct` (kernel BTF).
    GLOBAL_TASK_PID_OFF = "TASK_PID_OFF";
    /// Globals (rodata) `u32`: 1 when the offsets below are set; byte offsets of
    /// `task_struct.cgroups`, `css_set.dfl_cgrp`, `cgroup.kn`, `kernfs_node.id` (kernel BTF).
    GLOBAL_NEXT_CG_ON = "NEXT_CG_ON";
    GLOBAL_TASK_CGROUPS_OFF = "TASK_CG_OFF";
    GLOBAL_CSS_SET_DFL_OFF = "CSS_SET_DFL_OFF";
    GLOBAL_CGROUP_KN_OFF = "CGROUP_KN_OFF";
    GLOBAL_KN_ID_OFF = "KN_ID_OFF";
    /// Globals (rodata) `u32`: 1 when run-queue latency comes from `sched_info` (the wakeup
    /// hooks stay detached); byte offsets of `task_struct.sched_info.last_queued`,
    /// `task_struct.se.cfs_rq`, `cfs_rq.rq` and `rq.clock` (kernel BTF).
    GLOBAL_RQ_SCHED_INFO = "RQ_SCHED_INFO";
    GLOBAL_TASK_LAST_QUEUED_OFF = "TASK_LQ_OFF";
    GLOBAL_TASK_SE_CFS_RQ_OFF = "TASK_CFSRQ_OFF";
    GLOBAL_CFS_RQ_RQ_OFF = "CFS_RQ_RQ_OFF";
    GLOBAL_RQ_CLOCK_OFF = "RQ_CLOCK_OFF";
    /// Global (rodata) `u32`: offset of `pid` in the sched_wakeup tracepoint record.
    GLOBAL_WAKE_PID_OFF = "WAKE_PID_OFF";
    /// Global (rodata) `u32`: offset of `nr_sector` in the block_bio_queue record.
    GLOBAL_BIO_NSECT_OFF = "BIO_NSECT_OFF";
    /// Global (rodata) `u32`: offset of `rwbs` in the block_bio_queue record.
    GLOBAL_BIO_RWBS_OFF = "BIO_RWBS_OFF";

    /// TC ingress on the host end of a replica's veth: drops everything the replica sends.
    PROG_DISCARD_TC = "shadow_discard";
    /// cgroup connect4/connect6/sendmsg4/sendmsg6 on each replica's cgroup2 directory.
    PROG_CONNECT4 = "shd_connect4";
    PROG_CONNECT6 = "shd_connect6";
    PROG_SENDMSG4 = "shd_sendmsg4";
    PROG_SENDMSG6 = "shd_sendmsg6";
    /// `Array<DiscardConfig>`, one entry.
    MAP_DISCARD_CFG = "DISCARD_CFG";
    /// `Array<AllowRule>`, `MAX_ALLOW` entries.
    MAP_ALLOW_RULES = "ALLOW_RULES";
    /// `PerCpuArray<u64>`, indexed by `discard::ctr::*`.
    MAP_DISCARD_CTRS = "DISCARD_CTRS";
    /// `LruHashMap<Dest, u64>`: refused attempts per destination.
    MAP_REFUSED = "REFUSED";
}
