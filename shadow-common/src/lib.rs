//! Types and pure logic shared by Shadow's eBPF programs (`shadow-ebpf`) and its agent.
//!
//! Everything here compiles for `bpfel-unknown-none` and for the host, so the logic the
//! kernel runs is unit-tested (and later fuzzed) on the host. Structs crossing the
//! kernel/user boundary are `#[repr(C)]` with explicit padding and compile-time size checks;
//! no Rust enum is ever read back from kernel bytes.
#![no_std]

pub mod acct;
pub mod discard;
pub mod latency;
pub mod maps;
pub mod mask;
pub mod mirror;
pub mod pseudo;
pub mod tcp;

/// Implements `aya::Pod` for the userspace side (feature `user`).
#[macro_export]
#[doc(hidden)]
macro_rules! impl_pod {
    ($($t:ty),* $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: the type is `repr(C)`, `Copy`, has explicit padding and every bit
            // pattern is a valid value.
            unsafe impl aya::Pod for $t {}
        )*
    };
}
