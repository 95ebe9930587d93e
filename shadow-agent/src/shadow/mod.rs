//! Shadow Group Manager: launches, isolates, supervises and tears down shadow replicas, and
//! guarantees their output is discarded.
//!
//! Each replica gets its own network namespace holding the primary's service addresses on a
//! veth whose host end is the mirror's target, its own cgroup (child of the group's, which
//! carries the group's CPU and memory caps), its own mount namespace with throwaway
//! overlays on the configured paths, and the discard programs: TC drop at the host end and
//! cgroup connect/sendmsg refusal outside the allowlist.

pub mod autoscale;
pub mod config;
pub mod discard;
pub mod group;
pub mod mountns;
pub mod replica;
pub mod whatif;

pub use discard::{Allowlist, Discard, DiscardCounters, DiscardError, Refused};
pub use group::{GroupError, GroupSpec, RestartPolicy, ShadowGroup};
pub use replica::{CommandSpec, Replica, ReplicaError, ReplicaStatus};
