//! Shadow's privileged test harness.
//!
//! [`harness`] builds real kernel objects for a test (network namespaces, veth pairs with
//! addresses, cgroups, processes inside them) on top of the `shadow_agent::sys` guards, so
//! everything is removed on Drop, also when the test panics. Every object is named with the
//! `shdt` prefix; [`sweep`] removes what killed runs left behind and [`leftovers`] lists it.
//!
//! The tests need root: they call [`require_privileges`], which panics (never skips) when the
//! process lacks the capabilities.

pub mod harness;

pub use harness::{leftovers, require_privileges, sweep};
