//! Shadow's eBPF programs: one binary per subsystem (`mirror.rs`, `acct.rs`) so a program the
//! verifier rejects on some kernel does not take the others down. This library target exists
//! only so the agent's build script can depend on the crate; it holds the shared helpers.
#![no_std]

/// Add `v` to a per-CPU `u64` counter slot.
#[macro_export]
macro_rules! bump {
    ($map:expr, $idx:expr, $v:expr) => {
        if let Some(p) = $map.get_ptr_mut($idx) {
            // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
            unsafe { *p += $v }
        }
    };
}
