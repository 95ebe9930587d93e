//! Resource profiler: on-CPU time per cgroup from `sched_switch`.
//!
//! At every context switch the time since the previous switch on this CPU is charged to the
//! task being switched out, whose cgroup is still current (`bpf_get_current_cgroup_id`, the
//! cgroup2 id). Tracked cgroups are looked up in `ACCT_CGROUPS`; everything else is charged
//! to slot 0; the idle task is not charged. Two entry points share the logic: tp_btf
//! (preferred) and a raw tracepoint (fallback); the agent attaches one of them.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{btf_tracepoint, map, raw_tracepoint},
    maps::{HashMap, PerCpuArray},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use shadow_common::acct::{charge_ns, CgroupAcct, MAX_TRACKED, SLOT_OTHER};

#[map]
static ACCT_CGROUPS: HashMap<u64, u32> = HashMap::with_max_entries(MAX_TRACKED, 0);
#[map]
static ACCT: PerCpuArray<CgroupAcct> = PerCpuArray::with_max_entries(MAX_TRACKED, 0);
#[map]
static ACCT_LAST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[btf_tracepoint(function = "sched_switch")]
pub fn sched_sw_btf(_ctx: BtfTracePointContext) -> i32 {
    on_switch();
    0
}

#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sched_sw_raw(_ctx: RawTracePointContext) -> i32 {
    on_switch();
    0
}

#[inline(always)]
fn on_switch() {
    // SAFETY: plain helper calls without arguments.
    let (now, pid_tgid, cgid) = unsafe {
        (
            bpf_ktime_get_ns(),
            bpf_get_current_pid_tgid(),
            bpf_get_current_cgroup_id(),
        )
    };
    let Some(last) = ACCT_LAST.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot, only this CPU touches it while the program runs.
    let prev = unsafe { core::mem::replace(&mut *last, now) };
    if pid_tgid == 0 {
        return; // the idle task
    }
    let delta = charge_ns(prev, now);
    // SAFETY: the value is a plain u32 copied out at once.
    let slot = unsafe { ACCT_CGROUPS.get(cgid) }
        .copied()
        .unwrap_or(SLOT_OTHER);
    if let Some(a) = ACCT.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe {
            (*a).cpu_ns += delta;
            (*a).switches += 1;
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
