//! Resource profiler: per-cgroup accounting in the kernel, for the cgroups the agent tracks.
//!
//! Every handler maps the cgroup2 id of the task it charges to a slot through
//! `ACCT_CGROUPS` (untracked cgroups share slot 0, "other"; the agent also maps a tracked
//! cgroup's descendants to its slot) and bumps per-CPU counters in
//! `ACCT` / `RQ_HIST`; nothing is logged per event.
//!
//! - CPU: at every context switch the time since the previous switch on this CPU is charged
//!   to the task switched out, whose cgroup is still current; the idle task is not charged
//!   and costs no lookup. The cgroup's slot is cached per CPU (`CpuState`) while the
//!   generation in `ACCT_GEN` is unchanged. tp_btf (preferred) and raw tracepoint entry
//!   points share the code. The switch also records the cgroup2 id of the task switched
//!   *in* (`next->cgroups->dfl_cgrp->kn->id`, offsets from the kernel's BTF as load-time
//!   globals; 0 for the idle task or when the offsets are unknown), so the agent can add the
//!   running slice of a task that has not been switched out yet when it reads: a lone busy
//!   task on an otherwise idle CPU may not be switched out for seconds.
//! - Run-queue latency, from the scheduler's own timestamps where the kernel's BTF has them:
//!   at a switch the task switched in has waited `rq->clock - task->sched_info.last_queued`
//!   (both in the run queue's clock, set at enqueue: wakeup or preemption; the rq reached
//!   through `task->se.cfs_rq->rq`; offsets from the kernel's BTF as load-time globals). The
//!   wait is kept per CPU and recorded when that task is switched out, under the slot that
//!   switch looks up anyway: no extra lookup and no wakeup hook. Without those fields
//!   (`RQ_SCHED_INFO` = 0) the wakeup hooks measure instead: a task becomes runnable at a
//!   wakeup (tp_btf sched_wakeup / sched_wakeup_new: `task->pid` at its BTF offset; or the
//!   classic tracepoints' `pid` record field at its tracefs offset) or when it is preempted
//!   (sched_switch with `prev_state == TASK_RUNNING`); only tasks seen running in a tracked
//!   cgroup are followed (`RQ_TASKS`), so wakeups of other tasks cost one lookup.
//! - Page faults: kretprobe on handle_mm_fault (majors from `VM_FAULT_MAJOR` in the return
//!   value) where kprobes exist; tp_btf / raw tracepoint page_fault_user otherwise (totals).
//! - Block IO: classic tracepoint block_bio_queue, in the submitter's context (fields at
//!   offsets passed as globals).
//! - Network: cgroup_skb ingress/egress attached to tracked cgroup2 directories, charged by
//!   the socket's cgroup (`bpf_skb_cgroup_id`); always lets the packet through.
//! - exec/exit of tracked cgroups: `ProcEvent`s in the `ACCT_EVENTS` ring buffer; a full
//!   buffer drops the event and counts it (`ACCT_ERRS`), the kernel never waits.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_ktime_get_ns, bpf_probe_read_kernel, generated::bpf_skb_cgroup_id,
    },
    macros::{btf_tracepoint, cgroup_skb, kretprobe, map, raw_tracepoint, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{
        BtfTracePointContext, RawTracePointContext, RetProbeContext, SkBuffContext,
        TracePointContext,
    },
};
use shadow_common::acct::{
    blk, charge_ns, err, event, rq_bucket, rwbs_op, CgroupAcct, CpuState, ProcEvent, RqHist,
    TaskRq, EVENTS_BYTES, MAX_CGROUP_IDS, MAX_TRACKED, RQ_BUCKETS, RQ_TASKS_MAX, SLOT_OTHER,
};
use shadow_ebpf::bump;

#[map]
static ACCT_CGROUPS: HashMap<u64, u32> = HashMap::with_max_entries(MAX_CGROUP_IDS, 0);
#[map]
static ACCT: PerCpuArray<CgroupAcct> = PerCpuArray::with_max_entries(MAX_TRACKED, 0);
#[map]
static ACCT_LAST: PerCpuArray<CpuState> = PerCpuArray::with_max_entries(1, 0);
#[map]
static ACCT_GEN: Array<u64> = Array::with_max_entries(1, 0);
#[map]
static RQ_HIST: PerCpuArray<RqHist> = PerCpuArray::with_max_entries(MAX_TRACKED, 0);
#[map]
static RQ_TASKS: LruHashMap<u32, TaskRq> = LruHashMap::with_max_entries(RQ_TASKS_MAX, 0);
#[map]
static ACCT_EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);
#[map]
static ACCT_ERRS: PerCpuArray<u64> = PerCpuArray::with_max_entries(err::COUNT, 0);

/// Byte offset of `pid` in `struct task_struct` (set by the agent from the kernel's BTF).
#[unsafe(no_mangle)]
static TASK_PID_OFF: u32 = 0;
/// Byte offsets of the chain `task_struct.cgroups` -> `css_set.dfl_cgrp` -> `cgroup.kn` ->
/// `kernfs_node.id` (set by the agent from the kernel's BTF; `NEXT_CG_ON` = 0 when they are
/// unknown, and the switched-in task's cgroup is then not recorded).
#[unsafe(no_mangle)]
static NEXT_CG_ON: u32 = 0;
#[unsafe(no_mangle)]
static TASK_CG_OFF: u32 = 0;
#[unsafe(no_mangle)]
static CSS_SET_DFL_OFF: u32 = 0;
#[unsafe(no_mangle)]
static CGROUP_KN_OFF: u32 = 0;
#[unsafe(no_mangle)]
static KN_ID_OFF: u32 = 0;
/// Run-queue latency from `sched_info` (1) or from the wakeup hooks (0), and the offsets it
/// reads: `task_struct.sched_info.last_queued`, `task_struct.se.cfs_rq`, `cfs_rq.rq`,
/// `rq.clock` (set by the agent from the kernel's BTF).
#[unsafe(no_mangle)]
static RQ_SCHED_INFO: u32 = 0;
#[unsafe(no_mangle)]
static TASK_LQ_OFF: u32 = 0;
#[unsafe(no_mangle)]
static TASK_CFSRQ_OFF: u32 = 0;
#[unsafe(no_mangle)]
static CFS_RQ_RQ_OFF: u32 = 0;
#[unsafe(no_mangle)]
static RQ_CLOCK_OFF: u32 = 0;
/// Offset of `pid` in the sched_wakeup(_new) record (set by the agent from tracefs).
#[unsafe(no_mangle)]
static WAKE_PID_OFF: u32 = 24;
/// Offsets of `nr_sector` and `rwbs` in the block_bio_queue record (set by the agent).
#[unsafe(no_mangle)]
static BIO_NSECT_OFF: u32 = 24;
#[unsafe(no_mangle)]
static BIO_RWBS_OFF: u32 = 28;

/// `TASK_RUNNING`: a switched-out task in this state stays on the run queue (preempted).
const TASK_RUNNING: u32 = 0;
/// `VM_FAULT_MAJOR` in handle_mm_fault's return value (stable since 2.6).
const VM_FAULT_MAJOR: u64 = 0x4;

#[inline(always)]
fn slot_of(cgid: u64) -> u32 {
    // SAFETY: the value is a plain u32 copied out at once.
    unsafe { ACCT_CGROUPS.get(cgid) }
        .copied()
        .unwrap_or(SLOT_OTHER)
}

#[inline(always)]
fn current_slot() -> u32 {
    // SAFETY: helper without arguments.
    slot_of(unsafe { bpf_get_current_cgroup_id() })
}

#[inline(always)]
fn acct(slot: u32) -> Option<*mut CgroupAcct> {
    ACCT.get_ptr_mut(slot)
}

// ---- CPU time and run-queue latency ---------------------------------------------------------

/// An empty sched_switch handler, never attached by the profiler: the benchmark's peer
/// (`cargo xtask bench profiler`), the cost of any tp_btf hook on sched_switch before its
/// body does anything.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_sw_nop(_ctx: BtfTracePointContext) -> i32 {
    0
}

/// Reads a load-time global (rodata, constant to the verifier).
macro_rules! global {
    ($g:ident) => {
        // SAFETY: rodata global written by the loader before load.
        unsafe { core::ptr::read_volatile(&$g) } as usize
    };
}

#[btf_tracepoint(function = "sched_switch")]
pub fn sched_sw_btf(ctx: BtfTracePointContext) -> i32 {
    // Argument 3 of sched_switch is `unsigned int prev_state`, a scalar.
    let prev_state: u32 = ctx.arg(3);
    let next: *const u8 = ctx.arg(2);
    if task_pid(next) == 0 {
        on_switch(prev_state, 0, 0);
    } else {
        on_switch(prev_state, next_cgroup_btf(next), next_wait_btf(next));
    }
    0
}

#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sched_sw_raw(ctx: RawTracePointContext) -> i32 {
    // Raw tracepoint args are the same as tp_btf's: args[3] is `prev_state`.
    let prev_state: u64 = ctx.arg(3);
    let next = ctx.arg::<u64>(2) as *const u8;
    let pid_off = global!(TASK_PID_OFF);
    // SAFETY: probe read of kernel memory; a bad address returns an error, never faults.
    match unsafe { bpf_probe_read_kernel(next.wrapping_add(pid_off).cast::<i32>()) } {
        Ok(pid) if pid != 0 => on_switch(
            prev_state as u32,
            next_cgroup_raw(next),
            next_wait_raw(next),
        ),
        _ => on_switch(prev_state as u32, 0, 0),
    }
    0
}

/// The offsets of the task -> cgroup2 id chain, if the agent set them.
#[inline(always)]
fn chain_offsets() -> Option<[usize; 4]> {
    if global!(NEXT_CG_ON) == 0 {
        return None;
    }
    Some([
        global!(TASK_CG_OFF),
        global!(CSS_SET_DFL_OFF),
        global!(CGROUP_KN_OFF),
        global!(KN_ID_OFF),
    ])
}

/// cgroup2 id of the task being switched in, from a BTF-typed `struct task_struct *`: plain
/// loads the verifier checks against the kernel's BTF (and turns into fault-safe ones).
/// 0 when the offsets are unknown. Not for the idle task (its caller checks).
#[inline(always)]
fn next_cgroup_btf(task: *const u8) -> u64 {
    let Some([cg, dfl, kn, id]) = chain_offsets() else {
        return 0;
    };
    // SAFETY: each step loads a pointer member at its BTF offset from a BTF-typed pointer;
    // a NULL along the way reads as 0 (fault-safe loads), never a fault.
    unsafe {
        let css = core::ptr::read_volatile(task.wrapping_add(cg).cast::<*const u8>());
        let cgrp = core::ptr::read_volatile(css.wrapping_add(dfl).cast::<*const u8>());
        let node = core::ptr::read_volatile(cgrp.wrapping_add(kn).cast::<*const u8>());
        core::ptr::read_volatile(node.wrapping_add(id).cast::<u64>())
    }
}

/// The same through `bpf_probe_read_kernel`, for the raw tracepoint (untyped arguments).
#[inline(always)]
fn next_cgroup_raw(task: *const u8) -> u64 {
    let Some([cg, dfl, kn, id]) = chain_offsets() else {
        return 0;
    };
    // SAFETY: probe reads of kernel memory; a bad address returns an error, never faults.
    unsafe {
        let Ok(css) = bpf_probe_read_kernel(task.wrapping_add(cg).cast::<*const u8>()) else {
            return 0;
        };
        let Ok(cgrp) = bpf_probe_read_kernel(css.wrapping_add(dfl).cast::<*const u8>()) else {
            return 0;
        };
        let Ok(node) = bpf_probe_read_kernel(cgrp.wrapping_add(kn).cast::<*const u8>()) else {
            return 0;
        };
        bpf_probe_read_kernel(node.wrapping_add(id).cast::<u64>()).unwrap_or(0)
    }
}

/// The run-queue wait that ends now for the task being switched in, plus one (see
/// `CpuState::running_wait`): `rq->clock - task->sched_info.last_queued`, both in the run
/// queue's clock (`rq->clock` was updated at the start of this `__schedule`, and is the
/// value the scheduler's own accounting uses at this switch; a clock step backwards between
/// CPUs counts as 0). 0 when not in sched_info mode or when the task was not queued.
#[inline(always)]
fn next_wait_btf(task: *const u8) -> u64 {
    if global!(RQ_SCHED_INFO) == 0 {
        return 0;
    }
    let [lq, cfs, rq_off, clock_off] = wait_offsets();
    // SAFETY: loads of members at their BTF offsets from a BTF-typed pointer (checked by the
    // verifier, fault-safe); a NULL along the way reads as 0.
    unsafe {
        let queued = core::ptr::read_volatile(task.wrapping_add(lq).cast::<u64>());
        if queued == 0 {
            return 0;
        }
        let cfs_rq = core::ptr::read_volatile(task.wrapping_add(cfs).cast::<*const u8>());
        let rq = core::ptr::read_volatile(cfs_rq.wrapping_add(rq_off).cast::<*const u8>());
        let clock = core::ptr::read_volatile(rq.wrapping_add(clock_off).cast::<u64>());
        clock.saturating_sub(queued).saturating_add(1)
    }
}

/// The offsets [`next_wait_btf`] and [`next_wait_raw`] follow.
#[inline(always)]
fn wait_offsets() -> [usize; 4] {
    [
        global!(TASK_LQ_OFF),
        global!(TASK_CFSRQ_OFF),
        global!(CFS_RQ_RQ_OFF),
        global!(RQ_CLOCK_OFF),
    ]
}

/// The same through `bpf_probe_read_kernel`, for the raw tracepoint.
#[inline(always)]
fn next_wait_raw(task: *const u8) -> u64 {
    if global!(RQ_SCHED_INFO) == 0 {
        return 0;
    }
    let [lq, cfs, rq_off, clock_off] = wait_offsets();
    // SAFETY: probe reads of kernel memory; a bad address returns an error, never faults.
    unsafe {
        let queued = bpf_probe_read_kernel(task.wrapping_add(lq).cast::<u64>()).unwrap_or(0);
        if queued == 0 {
            return 0;
        }
        let Ok(cfs_rq) = bpf_probe_read_kernel(task.wrapping_add(cfs).cast::<*const u8>()) else {
            return 0;
        };
        let Ok(rq) = bpf_probe_read_kernel(cfs_rq.wrapping_add(rq_off).cast::<*const u8>()) else {
            return 0;
        };
        bpf_probe_read_kernel(rq.wrapping_add(clock_off).cast::<u64>())
            .map_or(0, |clock| clock.saturating_sub(queued).saturating_add(1))
    }
}

#[inline(always)]
fn on_switch(prev_state: u32, next_cg: u64, next_wait: u64) {
    // SAFETY: plain helper calls without arguments.
    let (now, pid_tgid) = unsafe { (bpf_ktime_get_ns(), bpf_get_current_pid_tgid()) };
    let Some(st) = ACCT_LAST.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU entry; only sched_switch touches it, with interrupts off.
    let st = unsafe { &mut *st };
    st.seq = st.seq.wrapping_add(1);
    let prev = st.last_ns;
    // The idle task: nothing to charge, no cgroup to look up.
    if pid_tgid != 0 {
        charge_prev(st, prev, now, pid_tgid, prev_state);
    }
    // `seq` is odd from before the charge to after the new slice start: a reader that saw
    // it even and unchanged around its read of `ACCT` saw counters and slice start agree.
    st.last_ns = now;
    st.running_cg = next_cg;
    st.running_wait = next_wait;
    st.seq = st.seq.wrapping_add(1);
}

/// Charges the slice `prev..now` to the task switched out (current), and records its
/// run-queue latency.
#[inline(always)]
fn charge_prev(st: &mut CpuState, prev: u64, now: u64, pid_tgid: u64, prev_state: u32) {
    let delta = charge_ns(prev, now);
    // SAFETY: helper without arguments.
    let cgid = unsafe { bpf_get_current_cgroup_id() };
    let gen = ACCT_GEN.get(0).copied().unwrap_or(0);
    let slot = if gen != 0 && st.gen == gen && st.cg_id == cgid {
        st.cg_slot
    } else {
        // Read the generation before the lookup: a change in between leaves an older
        // generation in the cache, which the next switch refreshes.
        let slot = slot_of(cgid);
        st.cg_id = cgid;
        st.cg_slot = slot;
        st.gen = gen;
        slot
    };
    if let Some(a) = acct(slot) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe {
            (*a).cpu_ns += delta;
            (*a).switches += 1;
        }
    }
    if slot == SLOT_OTHER {
        return;
    }
    if global!(RQ_SCHED_INFO) != 0 {
        // The wait that ended when this task was switched in.
        if st.running_wait != 0 {
            record_wait(slot, st.running_wait - 1);
        }
        return;
    }
    // Run-queue latency of the task switched out: it was switched in at `prev`. A preempted
    // task is back on the run queue from now; one lookup serves both.
    let pid = pid_tgid as u32;
    let requeued = if prev_state == TASK_RUNNING { now } else { 0 };
    let enq = match RQ_TASKS.get_ptr_mut(pid) {
        Some(t) => {
            // SAFETY: the entry stays valid for the program's run; a concurrent wakeup
            // writes the same u64 field, a race loses at most one sample.
            unsafe { core::mem::replace(&mut (*t).enqueued_ns, requeued) }
        }
        None => {
            let t = TaskRq {
                enqueued_ns: requeued,
            };
            if RQ_TASKS.insert(pid, t, u64::from(BPF_NOEXIST)).is_err() {
                bump!(ACCT_ERRS, err::RQ_TASKS_FULL, 1);
            }
            0
        }
    };
    if enq != 0 && prev != 0 && enq <= prev {
        record_wait(slot, prev - enq);
    }
}

/// One run-queue wait of `ns` into the slot's log2 histogram on this CPU.
#[inline(always)]
fn record_wait(slot: u32, ns: u64) {
    let b = rq_bucket(ns) as usize;
    if let Some(h) = RQ_HIST.get_ptr_mut(slot) {
        if b < RQ_BUCKETS {
            // SAFETY: per-CPU slot; `b` is bounds-checked above.
            unsafe { (*h).buckets[b] += 1 }
        }
    }
}

/// A task became runnable: if it is followed, it waits from now.
#[inline(always)]
fn on_wakeup(pid: u32) {
    if let Some(t) = RQ_TASKS.get_ptr_mut(pid) {
        // SAFETY: plain helper; the entry stays valid for the program's run.
        unsafe { (*t).enqueued_ns = bpf_ktime_get_ns() }
    }
}

/// A new task became runnable; the parent (current) decides: a child forked in a tracked
/// cgroup starts there, and is followed from now.
#[inline(always)]
fn on_wakeup_new(pid: u32) {
    if current_slot() == SLOT_OTHER {
        return;
    }
    let t = TaskRq {
        // SAFETY: plain helper.
        enqueued_ns: unsafe { bpf_ktime_get_ns() },
    };
    if RQ_TASKS.insert(pid, t, 0).is_err() {
        bump!(ACCT_ERRS, err::RQ_TASKS_FULL, 1);
    }
}

/// `task->pid` of a `struct task_struct *` tp_btf argument: a plain load at the offset the
/// agent found in the kernel's BTF, which the verifier checks against the same BTF.
#[inline(always)]
fn task_pid(task: *const u8) -> u32 {
    // SAFETY: rodata global written by the loader before load.
    let off = unsafe { core::ptr::read_volatile(&TASK_PID_OFF) } as usize;
    // SAFETY: a BTF-typed pointer from the tracepoint; the kernel turns the load into a
    // fault-safe one and the verifier checks the offset is task_struct's pid.
    unsafe { core::ptr::read_volatile(task.wrapping_add(off).cast::<i32>()) as u32 }
}

#[btf_tracepoint(function = "sched_wakeup")]
pub fn sched_wake_btf(ctx: BtfTracePointContext) -> i32 {
    // Argument 0 of sched_wakeup is `struct task_struct *p`, the woken task.
    on_wakeup(task_pid(ctx.arg(0)));
    0
}

#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn sched_wknew_btf(ctx: BtfTracePointContext) -> i32 {
    on_wakeup_new(task_pid(ctx.arg(0)));
    0
}

/// The woken task's pid from a sched_wakeup(_new) record.
#[inline(always)]
fn woken_pid(ctx: &TracePointContext) -> Option<u32> {
    // SAFETY: rodata global written by the loader before load.
    let off = unsafe { core::ptr::read_volatile(&WAKE_PID_OFF) } as usize;
    // SAFETY: `off` is the pid field's offset in this tracepoint's record (from tracefs).
    match unsafe { ctx.read_at::<i32>(off) } {
        Ok(pid) => Some(pid as u32),
        Err(_) => {
            bump!(ACCT_ERRS, err::TP_READ, 1);
            None
        }
    }
}

#[tracepoint(category = "sched", name = "sched_wakeup")]
pub fn sched_wakeup_tp(ctx: TracePointContext) -> i32 {
    if let Some(pid) = woken_pid(&ctx) {
        on_wakeup(pid);
    }
    0
}

#[tracepoint(category = "sched", name = "sched_wakeup_new")]
pub fn sched_wknew_tp(ctx: TracePointContext) -> i32 {
    if let Some(pid) = woken_pid(&ctx) {
        on_wakeup_new(pid);
    }
    0
}

// ---- page faults ----------------------------------------------------------------------------

#[inline(always)]
fn count_fault(major: bool) {
    if let Some(a) = acct(current_slot()) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe {
            (*a).faults += 1;
            if major {
                (*a).major_faults += 1;
            }
        }
    }
}

#[kretprobe(function = "handle_mm_fault")]
pub fn pgfault_kret(ctx: RetProbeContext) -> u32 {
    let ret: u64 = ctx.ret();
    count_fault(ret & VM_FAULT_MAJOR != 0);
    0
}

#[btf_tracepoint(function = "page_fault_user")]
pub fn pgfault_btf(_ctx: BtfTracePointContext) -> i32 {
    count_fault(false);
    0
}

#[raw_tracepoint(tracepoint = "page_fault_user")]
pub fn pgfault_raw(_ctx: RawTracePointContext) -> i32 {
    count_fault(false);
    0
}

// ---- block IO -------------------------------------------------------------------------------

#[tracepoint(category = "block", name = "block_bio_queue")]
pub fn blk_bio_tp(ctx: TracePointContext) -> i32 {
    let slot = current_slot();
    // SAFETY: rodata globals written by the loader before load.
    let (nsect_off, rwbs_off) = unsafe {
        (
            core::ptr::read_volatile(&BIO_NSECT_OFF) as usize,
            core::ptr::read_volatile(&BIO_RWBS_OFF) as usize,
        )
    };
    // SAFETY: offsets of this tracepoint's fields, from tracefs.
    let (Ok(nsect), Ok(rwbs)) = (unsafe { ctx.read_at::<u32>(nsect_off) }, unsafe {
        ctx.read_at::<[u8; 8]>(rwbs_off)
    }) else {
        bump!(ACCT_ERRS, err::TP_READ, 1);
        return 0;
    };
    let bytes = u64::from(nsect) * 512;
    if let Some(a) = acct(slot) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe {
            match rwbs_op(&rwbs) {
                blk::READ => {
                    (*a).io_read_bytes += bytes;
                    (*a).io_read_ops += 1;
                }
                blk::WRITE => {
                    (*a).io_write_bytes += bytes;
                    (*a).io_write_ops += 1;
                }
                _ => {}
            }
        }
    }
    0
}

// ---- process exec / exit --------------------------------------------------------------------

#[inline(always)]
fn proc_event(kind: u32) {
    // SAFETY: helpers without arguments.
    let (cgid, pid_tgid) = unsafe { (bpf_get_current_cgroup_id(), bpf_get_current_pid_tgid()) };
    let pid = pid_tgid as u32;
    let tgid = (pid_tgid >> 32) as u32;
    if kind == event::EXIT {
        // The task is gone: stop following it, whatever its cgroup.
        let _ = RQ_TASKS.remove(pid);
        if pid != tgid {
            return; // a thread, not the process
        }
    }
    let slot = slot_of(cgid);
    if slot == SLOT_OTHER {
        return;
    }
    if let Some(a) = acct(slot) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe {
            if kind == event::EXEC {
                (*a).execs += 1;
            } else {
                (*a).exits += 1;
            }
        }
    }
    let Some(mut entry) = ACCT_EVENTS.reserve::<ProcEvent>(0) else {
        bump!(ACCT_ERRS, err::RINGBUF_FULL, 1);
        return;
    };
    entry.write(ProcEvent {
        kind,
        pid,
        tgid,
        slot,
        cgroup_id: cgid,
        // SAFETY: plain helper.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        comm: bpf_get_current_comm().unwrap_or_default(),
    });
    entry.submit(0);
}

#[btf_tracepoint(function = "sched_process_exec")]
pub fn proc_exec_btf(_ctx: BtfTracePointContext) -> i32 {
    proc_event(event::EXEC);
    0
}

#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn proc_exec_raw(_ctx: RawTracePointContext) -> i32 {
    proc_event(event::EXEC);
    0
}

#[btf_tracepoint(function = "sched_process_exit")]
pub fn proc_exit_btf(_ctx: BtfTracePointContext) -> i32 {
    proc_event(event::EXIT);
    0
}

#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn proc_exit_raw(_ctx: RawTracePointContext) -> i32 {
    proc_event(event::EXIT);
    0
}

// ---- network --------------------------------------------------------------------------------

#[inline(always)]
fn count_skb(ctx: &SkBuffContext, ingress: bool) {
    // SAFETY: the context's skb pointer is what the helper expects.
    let cgid = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    let len = u64::from(ctx.len());
    if let Some(a) = acct(slot_of(cgid)) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe {
            if ingress {
                (*a).net_rx_bytes += len;
                (*a).net_rx_packets += 1;
            } else {
                (*a).net_tx_bytes += len;
                (*a).net_tx_packets += 1;
            }
        }
    }
}

/// cgroup_skb verdict: let the packet through.
const SKB_PASS: i32 = 1;

#[cgroup_skb(ingress)]
pub fn cg_skb_in(ctx: SkBuffContext) -> i32 {
    count_skb(&ctx, true);
    SKB_PASS
}

#[cgroup_skb(egress)]
pub fn cg_skb_out(ctx: SkBuffContext) -> i32 {
    count_skb(&ctx, false);
    SKB_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
