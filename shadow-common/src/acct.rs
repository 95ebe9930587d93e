//! Per-cgroup resource accounting shared by the profiler program and the agent.

/// Maximum number of cgroups tracked at once (slot 0 is reserved for "other").
pub const MAX_TRACKED: u32 = 256;
/// The slot every untracked cgroup is charged to.
pub const SLOT_OTHER: u32 = 0;

/// Per-CPU, per-slot counters. Summed over CPUs by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupAcct {
    /// Nanoseconds on CPU, charged at each context switch to the task switched out.
    pub cpu_ns: u64,
    /// Number of times a task of this cgroup was switched out.
    pub switches: u64,
}
const _: () = assert!(core::mem::size_of::<CgroupAcct>() == 16);
crate::impl_pod!(CgroupAcct);

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
}
