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

    /// `Array<MirrorConfig>`, one entry.
    MAP_MIRROR_CFG = "MIRROR_CFG";
    /// `Array<MirrorRule>`, `MAX_RULES` entries; `MirrorConfig::n_rules` are live.
    MAP_MIRROR_RULES = "MIRROR_RULES";
    /// `PerCpuArray<u64>`, indexed by `mirror::ctr::*`.
    MAP_MIRROR_CTRS = "MIRROR_CTRS";
    /// `PerCpuArray<RuleLoad>`, one entry per rule, written by the XDP program.
    MAP_RULE_LOAD = "RULE_LOAD";

    /// `HashMap<u64 cgroup id, u32 slot>`: the cgroups the profiler tracks.
    MAP_ACCT_CGROUPS = "ACCT_CGROUPS";
    /// `PerCpuArray<CgroupAcct>`, indexed by slot; slot 0 is "everything else".
    MAP_ACCT = "ACCT";
    /// `PerCpuArray<u64>`: time of the last context switch on this CPU.
    MAP_ACCT_LAST = "ACCT_LAST";
}
