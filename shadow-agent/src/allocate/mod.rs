//! The predictive resource allocator: sizes the primary's CPU quota, memory limit and cpuset
//! ahead of demand when the forecast is confident, reacts to pressure when it is not, and never
//! harms the primary (rails, dry run, audit, restore of the original limits).
//!
//! It is an idempotent reconcile step, as kube-rs controllers are:
//! [`Reconciler::step`] reads the actual limits and counters, computes the desired limits with
//! the pure functions of [`policy`], writes only the difference, and records why in the audit
//! log. Running a step twice with the same inputs writes nothing the second time.
//!
//! - [`policy`]: the decision of one interval (pure): confidence, targets, safety rails.
//! - [`backend`]: reading and writing limits, cgroup v1 (hybrid hosts) and v2, one trait.
//! - [`state`]: the original-limits record (restore on exit and after a crash) and the audit
//!   log (JSON lines).
//! - [`reconcile`]: the [`Reconciler`] tying them together, with dry run and back-off.
//! - [`sim`]: trace-driven simulation of policies with the same decision code.
//! - [`cpuset`]: CPU lists.
//! - [`scale`]: scale-out / scale-in events when the forecast exceeds (or stays well below)
//!   what the node can give the primary; webhook.
//! - [`irq`]: NIC/IRQ locality of network-IO-heavy primaries (which CPUs serve the NIC).
//! - [`gate`]: forecast shrinks held until a what-if shadow replica passed at the proposed
//!   limit (`[allocate.whatif]`).
//! - [`live`]: the `[allocate]` section of `shadow-agent run`: the default forecaster fills
//!   [`ForecastInput`] (point, interval at a level, recent empirical coverage) per resource.
//!
//! See `docs/allocator.md`.

pub mod backend;
pub mod cli;
pub mod cpuset;
pub mod gate;
pub mod irq;
pub mod kube;
pub mod live;
pub mod policy;
pub mod reconcile;
pub mod scale;
pub mod sim;
pub mod state;
pub mod validate;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use backend::{Backend, BackendKind, Limits, Sample, V1Backend, V2Backend};
pub use cpuset::CpuSet;
pub use policy::{
    decide, Confidence, ConfidenceRule, Decision, ForecastInput, PolicyConfig, Rail, Rails,
    ReactiveRule, Reason, Resource, ResourceState, Signal, Signals,
};
pub use reconcile::{AllocatorConfig, Forecasts, Reconciler, StepReport};
pub use state::{AuditEntry, AuditLog, OriginalRecord, RestoreReport};

/// Errors of the allocator. Every file error names the cgroup file.
#[derive(Debug, thiserror::Error)]
pub enum AllocateError {
    /// A file operation on `path` failed.
    #[error("{op} {} failed", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A control file holds something unexpected.
    #[error("{} holds {value:?}, expected {expected}", path.display())]
    Parse {
        path: PathBuf,
        value: String,
        expected: &'static str,
    },

    /// The group has no directory for a controller the allocator needs.
    #[error("cgroup {cgroup:?} has no {controller} directory ({} is missing)", path.display())]
    NoGroup {
        cgroup: String,
        controller: &'static str,
        path: PathBuf,
    },

    /// The group name or layout was refused by the cgroup module.
    #[error("cgroup {cgroup:?}")]
    Cgroup {
        cgroup: String,
        #[source]
        source: crate::sys::cgroup::CgroupError,
    },

    /// A state or audit file could not be (de)serialised.
    #[error("{op} {} failed", path.display())]
    Json {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// A configuration value is out of range.
    #[error("allocator config: {key}: {reason}")]
    Config { key: String, reason: &'static str },

    /// A network interface named in the config does not exist.
    #[error("network interface {interface:?} not found ({} is missing)", path.display())]
    NoInterface { interface: String, path: PathBuf },

    /// The group belongs to the kubelet, which rewrites its limits.
    #[error(
        "cgroup {cgroup:?} is owned by the kubelet; resize it through the pod resize API, or set \
         allow_kubelet_owned to write it directly"
    )]
    KubeletOwned { cgroup: String },

    /// A kubelet-owned group resized through the Kubernetes API: the API said no, or the
    /// group could not be matched to a pod's container.
    #[error("cgroup {cgroup:?} (Kubernetes): {reason}")]
    Kube { cgroup: String, reason: String },

    /// `[allocate.kubernetes]` cannot be used as given (a file it names, say).
    #[error("{key}: {reason}")]
    KubeConfig { key: String, reason: String },

    /// Some original limits could not be written back; the record is kept for a retry.
    #[error(
        "restoring the original limits of {cgroup:?} failed for {} (record kept at {})",
        failed.iter().map(|(p, e)| format!("{}: {e}", p.display())).collect::<Vec<_>>().join("; "),
        record.display()
    )]
    Restore {
        cgroup: String,
        record: PathBuf,
        failed: Vec<(PathBuf, String)>,
    },
}

/// Result alias of this module.
pub type Result<T, E = AllocateError> = std::result::Result<T, E>;
