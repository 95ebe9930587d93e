//! The error for a missing prerequisite: `main` maps it to exit code 2.

use std::fmt;

/// A prerequisite is missing and could not be installed. The message is one paragraph naming
/// what is missing and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrereqError(pub String);

impl fmt::Display for PrereqError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PrereqError {}

/// Returns `Err(PrereqError)` as an `anyhow::Error` (so `?` keeps it downcastable).
pub fn missing<T>(paragraph: impl Into<String>) -> anyhow::Result<T> {
    Err(PrereqError(paragraph.into()).into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn stays_downcastable_through_context() {
        let err = missing::<()>("bpf-linker is missing")
            .context("setup")
            .unwrap_err();
        let prereq = err.downcast_ref::<PrereqError>().expect("downcast");
        assert_eq!(prereq.to_string(), "bpf-linker is missing");
    }
}
