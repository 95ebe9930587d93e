//! The agent's top-level error: what went wrong and which exit code it maps to.

use std::path::PathBuf;

use crate::{mirror::MirrorError, profile::ProfileError};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Mirror(#[from] MirrorError),
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error(transparent)]
    Shadow(Box<crate::shadow::GroupError>),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error("allocate")]
    Allocate(#[from] crate::allocate::AllocateError),
    #[error("report")]
    Report(#[from] crate::report::ReportError),
    #[error("profile.cgroups: {path} is not a cgroup2 directory")]
    NotACgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{op}")]
    Io {
        op: String,
        #[source]
        source: std::io::Error,
    },
    #[error("demo set-up: {op}")]
    Setup {
        op: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// `error: cause: cause ...` on one line: how every command reports an error.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(cause) = cur {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        cur = cause.source();
    }
    s
}

impl From<crate::shadow::GroupError> for AgentError {
    fn from(e: crate::shadow::GroupError) -> Self {
        AgentError::Shadow(Box::new(e))
    }
}

impl AgentError {
    /// 2 for problems in what the user asked for (nothing was attached), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            AgentError::NotACgroup { .. } | AgentError::Metrics(_) => 2,
            AgentError::Allocate(crate::allocate::AllocateError::KubeConfig { .. }) => 2,
            AgentError::Shadow(e) if e.is_usage() => 2,
            AgentError::Mirror(MirrorError::NoInterface { .. })
            | AgentError::Mirror(MirrorError::TooManyRules { .. })
            | AgentError::Mirror(MirrorError::XdpEgress { .. })
            | AgentError::Mirror(MirrorError::Kernel(_)) => 2,
            // An address nothing on this host leads to; a failed lookup is not bad input.
            AgentError::Mirror(MirrorError::Unresolved { reason, .. })
                if !matches!(reason, crate::sys::link::NotTowards::Lookup(_)) =>
            {
                2
            }
            _ => 1,
        }
    }

    pub fn setup(op: impl Into<String>, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        AgentError::Setup {
            op: op.into(),
            source: Box::new(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kernel without a helper the mirror calls is a refusal of what was asked (nothing
    /// attached, exit 2), and the one line says which helper and what to do.
    #[test]
    fn a_kernel_without_a_mirror_helper_is_exit_2_with_the_helper_named() {
        let e = AgentError::Mirror(MirrorError::Kernel(crate::ebpf::MissingHelpers {
            kernel: "5.15.0-91-generic".into(),
            missing: crate::ebpf::MIRROR_TC_NEEDS.to_vec(),
        }));
        assert_eq!(e.exit_code(), 2);
        let msg = chain(&e);
        for part in ["5.15.0-91-generic", "bpf_loop", "Linux 5.17+", "[mirror]"] {
            assert!(msg.contains(part), "{part:?} missing from: {msg}");
        }
    }
}
