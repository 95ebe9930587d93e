//! Per-cgroup resource accounting shared by the profiler programs and the agent.
//!
//! Everything the kernel side counts for one tracked cgroup lives in one [`CgroupAcct`] per
//! CPU and slot (one map lookup per event); run-queue latency lives in [`RqHist`] (log2
//! buckets of nanoseconds); process exec/exit go through a ring buffer as [`ProcEvent`].

/// Maximum number of cgroups tracked at once (slot 0 is reserved for "other").
pub const MAX_TRACKED: u32 = 256;
/// Cgroup ids the slot map holds at once: the tracked cgroups and their descendants, each
/// charged to its tracked ancestor's slot.
pub const MAX_CGROUP_IDS: u32 = 8192;
/// The slot every untracked cgroup is charged to.
pub const SLOT_OTHER: u32 = 0;
/// Number of log2 buckets of a run-queue latency histogram: bucket `b` holds latencies in
/// `[2^b, 2^(b+1))` ns (bucket 0 also holds 0); the last one holds everything above.
pub const RQ_BUCKETS: usize = 40;
/// Tasks whose run-queue state is followed at once (an LRU map; evictions lose one sample).
pub const RQ_TASKS_MAX: u32 = 16384;
/// Size of the exec/exit ring buffer in bytes (a power of two, multiple of the page size).
pub const EVENTS_BYTES: u32 = 256 * 1024;

/// Per-CPU, per-slot counters. Summed over CPUs by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupAcct {
    /// Nanoseconds on CPU, charged at each context switch to the task switched out.
    pub cpu_ns: u64,
    /// Number of times a task of this cgroup was switched out.
    pub switches: u64,
    /// Page faults (user-mode fault entries with the tracepoint hooks; every
    /// `handle_mm_fault` call with the kretprobe hook).
    pub faults: u64,
    /// Major page faults; only the kretprobe hook can tell them apart (0 otherwise).
    pub major_faults: u64,
    /// Block IO read bytes / bios submitted by tasks of this cgroup.
    pub io_read_bytes: u64,
    pub io_read_ops: u64,
    /// Block IO write bytes / bios submitted by tasks of this cgroup.
    pub io_write_bytes: u64,
    pub io_write_ops: u64,
    /// Network bytes / packets received (cgroup_skb ingress, IP packet length).
    pub net_rx_bytes: u64,
    pub net_rx_packets: u64,
    /// Network bytes / packets sent (cgroup_skb egress, IP packet length).
    pub net_tx_bytes: u64,
    pub net_tx_packets: u64,
    /// Processes that called execve / thread-group leaders that exited.
    pub execs: u64,
    pub exits: u64,
}
const _: () = assert!(core::mem::size_of::<CgroupAcct>() == 14 * 8);
crate::impl_pod!(CgroupAcct);

impl CgroupAcct {
    /// Field-wise sum (wrapping: counters never realistically wrap, but never panic).
    pub fn add(&self, o: &CgroupAcct) -> CgroupAcct {
        CgroupAcct {
            cpu_ns: self.cpu_ns.wrapping_add(o.cpu_ns),
            switches: self.switches.wrapping_add(o.switches),
            faults: self.faults.wrapping_add(o.faults),
            major_faults: self.major_faults.wrapping_add(o.major_faults),
            io_read_bytes: self.io_read_bytes.wrapping_add(o.io_read_bytes),
            io_read_ops: self.io_read_ops.wrapping_add(o.io_read_ops),
            io_write_bytes: self.io_write_bytes.wrapping_add(o.io_write_bytes),
            io_write_ops: self.io_write_ops.wrapping_add(o.io_write_ops),
            net_rx_bytes: self.net_rx_bytes.wrapping_add(o.net_rx_bytes),
            net_rx_packets: self.net_rx_packets.wrapping_add(o.net_rx_packets),
            net_tx_bytes: self.net_tx_bytes.wrapping_add(o.net_tx_bytes),
            net_tx_packets: self.net_tx_packets.wrapping_add(o.net_tx_packets),
            execs: self.execs.wrapping_add(o.execs),
            exits: self.exits.wrapping_add(o.exits),
        }
    }

    /// Field-wise `self - earlier` (saturating: a slot reset never yields huge deltas).
    pub fn delta(&self, earlier: &CgroupAcct) -> CgroupAcct {
        CgroupAcct {
            cpu_ns: self.cpu_ns.saturating_sub(earlier.cpu_ns),
            switches: self.switches.saturating_sub(earlier.switches),
            faults: self.faults.saturating_sub(earlier.faults),
            major_faults: self.major_faults.saturating_sub(earlier.major_faults),
            io_read_bytes: self.io_read_bytes.saturating_sub(earlier.io_read_bytes),
            io_read_ops: self.io_read_ops.saturating_sub(earlier.io_read_ops),
            io_write_bytes: self.io_write_bytes.saturating_sub(earlier.io_write_bytes),
            io_write_ops: self.io_write_ops.saturating_sub(earlier.io_write_ops),
            net_rx_bytes: self.net_rx_bytes.saturating_sub(earlier.net_rx_bytes),
            net_rx_packets: self.net_rx_packets.saturating_sub(earlier.net_rx_packets),
            net_tx_bytes: self.net_tx_bytes.saturating_sub(earlier.net_tx_bytes),
            net_tx_packets: self.net_tx_packets.saturating_sub(earlier.net_tx_packets),
            execs: self.execs.saturating_sub(earlier.execs),
            exits: self.exits.saturating_sub(earlier.exits),
        }
    }
}

/// Run-queue latency histogram of one slot on one CPU: log2 buckets of nanoseconds.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RqHist {
    pub buckets: [u64; RQ_BUCKETS],
}
const _: () = assert!(core::mem::size_of::<RqHist>() == RQ_BUCKETS * 8);
crate::impl_pod!(RqHist);

impl Default for RqHist {
    fn default() -> Self {
        RqHist {
            buckets: [0; RQ_BUCKETS],
        }
    }
}

/// Run-queue state of one task, keyed by its kernel pid (thread id) in `RQ_TASKS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskRq {
    /// When the task was last made runnable (woken or preempted); 0 = not waiting.
    pub enqueued_ns: u64,
}
const _: () = assert!(core::mem::size_of::<TaskRq>() == 8);
crate::impl_pod!(TaskRq);

/// Per-CPU state of the sched_switch handler (`ACCT_LAST`, one entry per CPU).
///
/// Besides the time of the last switch it caches the slot of the last cgroup it looked up,
/// valid while `gen` equals the generation in `ACCT_GEN` (the agent bumps it after every
/// change to `ACCT_CGROUPS`): consecutive switch-outs of one cgroup, the common case on a
/// busy CPU, then skip the hash lookup. Only sched_switch (interrupts off) touches it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuState {
    /// `bpf_ktime_get_ns` at the last context switch on this CPU (0 = none yet).
    pub last_ns: u64,
    /// cgroup2 id and slot of the cached lookup, and the `ACCT_GEN` value it was made under
    /// (0 = nothing cached: the agent's generations start at 1).
    pub cg_id: u64,
    pub cg_slot: u32,
    /// Odd while the handler updates this CPU's counters and state: the agent reads
    /// `ACCT` between two reads of this map and retries when `seq` was odd or moved.
    pub seq: u32,
    pub gen: u64,
    /// cgroup2 id of the task switched in at `last_ns`, running since (0: the idle task, or
    /// not known). The agent adds `now - last_ns` to that cgroup's CPU time when it reads.
    pub running_cg: u64,
    /// Run-queue wait of the task switched in at `last_ns`, from the scheduler's own
    /// `sched_info`, plus one: 0 when it was not queued (or the wakeup hooks measure
    /// instead), 1 for a wait the run queue's clock did not see pass (a wakeup that
    /// preempted at once). It is recorded when that task is switched out, under its
    /// cgroup's slot, which is then looked up anyway.
    pub running_wait: u64,
}
const _: () = assert!(core::mem::size_of::<CpuState>() == 48);
crate::impl_pod!(CpuState);

/// [`ProcEvent::kind`] values.
pub mod event {
    /// The task called execve successfully.
    pub const EXEC: u32 = 1;
    /// A thread-group leader exited.
    pub const EXIT: u32 = 2;
}

/// One record of the exec/exit ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcEvent {
    /// `event::EXEC` or `event::EXIT` (never read back as a Rust enum).
    pub kind: u32,
    /// Kernel pid (thread id) and thread-group id.
    pub pid: u32,
    pub tgid: u32,
    /// Tracked slot of the cgroup.
    pub slot: u32,
    /// cgroup2 id of the task.
    pub cgroup_id: u64,
    /// `bpf_ktime_get_ns` at the event.
    pub ts_ns: u64,
    /// Task name (NUL padded).
    pub comm: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<ProcEvent>() == 48);
crate::impl_pod!(ProcEvent);

/// Indices of the per-CPU `ACCT_ERRS` counters (events the kernel side could not record).
pub mod err {
    /// The exec/exit ring buffer was full: the event was dropped.
    pub const RINGBUF_FULL: u32 = 0;
    /// `RQ_TASKS` refused an insert: one task's latency is not followed.
    pub const RQ_TASKS_FULL: u32 = 1;
    /// A tracepoint field could not be read.
    pub const TP_READ: u32 = 2;
    /// Number of counters.
    pub const COUNT: u32 = 3;
}

/// Block operation kinds, from the tracepoint's `rwbs` string.
pub mod blk {
    pub const OTHER: u32 = 0;
    pub const READ: u32 = 1;
    pub const WRITE: u32 = 2;
}

/// The data direction of a block tracepoint's `rwbs` field ("W", "WS", "FWS", "R", "RA",
/// "D", "N", ...): the first character that is not a preflush `F`.
#[inline(always)]
pub fn rwbs_op(rwbs: &[u8; 8]) -> u32 {
    let c = if rwbs[0] == b'F' { rwbs[1] } else { rwbs[0] };
    match c {
        b'R' => blk::READ,
        b'W' => blk::WRITE,
        _ => blk::OTHER,
    }
}

/// Time to charge for a context switch at `now` when the previous switch on this CPU was
/// at `last` (0 = none seen yet since the program attached: charge nothing).
#[inline(always)]
pub fn charge_ns(last: u64, now: u64) -> u64 {
    if last == 0 || now < last {
        0
    } else {
        now - last
    }
}

/// Log2 bucket of a latency in ns: `floor(log2(ns))`, 0 for 0 and 1, capped at
/// `RQ_BUCKETS - 1`. Branch-light so the verifier sees no loop.
#[inline(always)]
pub fn rq_bucket(ns: u64) -> u32 {
    let mut v = ns;
    let mut b = 0u32;
    if v >= 1 << 32 {
        v >>= 32;
        b += 32;
    }
    if v >= 1 << 16 {
        v >>= 16;
        b += 16;
    }
    if v >= 1 << 8 {
        v >>= 8;
        b += 8;
    }
    if v >= 1 << 4 {
        v >>= 4;
        b += 4;
    }
    if v >= 1 << 2 {
        v >>= 2;
        b += 2;
    }
    if v >= 1 << 1 {
        b += 1;
    }
    if b >= RQ_BUCKETS as u32 {
        RQ_BUCKETS as u32 - 1
    } else {
        b
    }
}

/// Lower bound in ns of bucket `b` (0 for bucket 0).
pub fn rq_bucket_low(b: usize) -> u64 {
    if b == 0 {
        0
    } else {
        1u64 << b.min(63)
    }
}

/// Latency the agent records for every sample of bucket `b`: the bucket's midpoint
/// (1.5 * 2^b), so quantiles are off by at most a third of a bucket.
pub fn rq_bucket_value(b: usize) -> u64 {
    if b == 0 {
        1
    } else {
        rq_bucket_low(b) + rq_bucket_low(b) / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_switch_charges_nothing() {
        assert_eq!(charge_ns(0, 1_000), 0);
    }

    #[test]
    fn charges_elapsed_time() {
        assert_eq!(charge_ns(1_000, 3_500), 2_500);
    }

    #[test]
    fn clock_going_backwards_charges_nothing() {
        assert_eq!(charge_ns(5_000, 4_000), 0);
    }

    #[test]
    fn buckets_are_floor_log2() {
        assert_eq!(rq_bucket(0), 0);
        assert_eq!(rq_bucket(1), 0);
        assert_eq!(rq_bucket(2), 1);
        assert_eq!(rq_bucket(3), 1);
        assert_eq!(rq_bucket(1023), 9);
        assert_eq!(rq_bucket(1024), 10);
        for b in 1..39 {
            assert_eq!(rq_bucket(1u64 << b), b as u32);
            assert_eq!(rq_bucket((1u64 << (b + 1)) - 1), b as u32);
        }
        assert_eq!(rq_bucket(u64::MAX), RQ_BUCKETS as u32 - 1);
        assert_eq!(rq_bucket(1 << 45), RQ_BUCKETS as u32 - 1);
    }

    #[test]
    fn bucket_values_sit_inside_their_bucket() {
        for b in 1..RQ_BUCKETS - 1 {
            let v = rq_bucket_value(b);
            assert_eq!(rq_bucket(v), b as u32);
        }
    }

    #[test]
    fn rwbs_directions() {
        let f = |s: &[u8]| {
            let mut a = [0u8; 8];
            a[..s.len()].copy_from_slice(s);
            rwbs_op(&a)
        };
        assert_eq!(f(b"W"), blk::WRITE);
        assert_eq!(f(b"WS"), blk::WRITE);
        assert_eq!(f(b"FWS"), blk::WRITE);
        assert_eq!(f(b"R"), blk::READ);
        assert_eq!(f(b"RA"), blk::READ);
        assert_eq!(f(b"FF"), blk::OTHER);
        assert_eq!(f(b"D"), blk::OTHER);
        assert_eq!(f(b"N"), blk::OTHER);
    }

    #[test]
    fn delta_and_add_are_inverse() {
        let a = CgroupAcct {
            cpu_ns: 10,
            net_tx_bytes: 7,
            ..Default::default()
        };
        let b = CgroupAcct {
            cpu_ns: 5,
            execs: 1,
            ..Default::default()
        };
        assert_eq!(a.add(&b).delta(&b), a);
        assert_eq!(b.delta(&a).cpu_ns, 0);
    }
}
