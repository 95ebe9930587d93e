//! Validation of a forecast shrink on what-if shadow replicas, for `shadow-agent run`
//! (`[allocate.whatif]`): one comparison at a time, on a thread, so the agent's interval
//! loop never waits for it.
//!
//! A request to shrink the primary from `from` to `to` becomes a [`shadow::whatif`]
//! comparison of two one-replica groups of the `[shadow]` spec, both fed the same mirrored
//! flows of the primary by their own mirrors: a baseline at `from` and a candidate at `to`.
//! CPU limits are scaled by the share of the primary's load the replicas see
//! (`load_share`, by default the mirror's sample rate); memory limits are not (a process's
//! memory is mostly its baseline, not proportional to the sampled load). The verdict is
//! [`validate_shrink`] with the configured tolerance.
//!
//! [`shadow::whatif`]: crate::shadow::whatif

use std::sync::{atomic::AtomicBool, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use super::gate::{ShrinkOutcome, ShrinkRequest};
use super::policy::Resource;
use crate::shadow::{
    group::GroupSpec,
    whatif::{self, validate_shrink, Candidate, ShrinkTolerance, WhatifMirror, WhatifReport},
};

/// How shrinks are validated (the validated `[allocate.whatif]` section, with the parts of
/// `[shadow]` and `[mirror]` it needs).
#[derive(Debug, Clone)]
pub struct WhatifValidation {
    /// The `[shadow]` spec the replicas run.
    pub base: GroupSpec,
    /// The primary's interface and the rules selecting its traffic (`[mirror]`).
    pub mirror: WhatifMirror,
    /// Length of one comparison.
    pub duration: Duration,
    /// Fraction of the primary's load a replica sees (CPU limits are scaled by it).
    pub load_share: f64,
    pub tolerance: ShrinkTolerance,
}

impl WhatifValidation {
    /// The baseline spec and the candidate of a request.
    pub fn comparison(&self, req: &ShrinkRequest) -> (GroupSpec, Candidate) {
        let mut base = self.base.clone();
        let mut cand = Candidate {
            name: "proposed".to_owned(),
            ..Candidate::default()
        };
        match req.resource {
            Resource::Cpu => {
                base.cpu_cores = Some(req.from * self.load_share);
                cand.cpu_cores = Some(req.to * self.load_share);
            }
            Resource::Memory => {
                base.memory_bytes = Some(req.from.round() as u64);
                cand.memory_bytes = Some(req.to.round() as u64);
            }
            Resource::Cpuset => {}
        }
        (base, cand)
    }

    /// The verdict on a finished comparison.
    pub fn verdict(&self, req: ShrinkRequest, r: Result<WhatifReport, String>) -> ShrinkOutcome {
        match r {
            Ok(report) => {
                let (pass, reasons) = match report.candidates.first() {
                    Some(c) => {
                        let v = validate_shrink(&report.baseline, c, &self.tolerance);
                        (v.pass, v.reasons)
                    }
                    None => (
                        false,
                        vec!["the comparison reported no candidate".to_owned()],
                    ),
                };
                ShrinkOutcome {
                    request: req,
                    pass,
                    reasons,
                    report: serde_json::to_value(&report).ok(),
                }
            }
            Err(e) => ShrinkOutcome {
                request: req,
                pass: false,
                reasons: vec![format!("the what-if comparison could not run: {e}")],
                report: None,
            },
        }
    }
}

/// Runs at most one comparison at a time on a thread.
pub struct WhatifValidator {
    spec: WhatifValidation,
    running: Option<(ShrinkRequest, JoinHandle<Result<WhatifReport, String>>)>,
    stop: Arc<AtomicBool>,
}

impl WhatifValidator {
    pub fn new(spec: WhatifValidation) -> WhatifValidator {
        WhatifValidator {
            spec,
            running: None,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The request being validated.
    pub fn running(&self) -> Option<&ShrinkRequest> {
        self.running.as_ref().map(|(r, _)| r)
    }

    /// Starts validating `req`; false (nothing started) while another comparison runs.
    pub fn submit(&mut self, req: &ShrinkRequest) -> bool {
        if self.running.is_some() {
            return false;
        }
        let (base, cand) = self.spec.comparison(req);
        let mirror = self.spec.mirror.clone();
        let duration = self.spec.duration;
        let stop = Arc::clone(&self.stop);
        let handle = std::thread::Builder::new()
            .name("shadow-whatif".to_owned())
            .spawn(move || {
                whatif::run_until(&base, &[cand], &mirror, duration, &stop, |_| {})
                    .map_err(|e| crate::allocate::state::error_chain(&e))
            });
        match handle {
            Ok(h) => {
                self.running = Some((req.clone(), h));
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "could not start the what-if thread");
                false
            }
        }
    }

    /// The outcome of the comparison, once it has ended.
    pub fn poll(&mut self) -> Option<ShrinkOutcome> {
        if !self.running.as_ref()?.1.is_finished() {
            return None;
        }
        let (req, h) = self.running.take()?;
        let r = h
            .join()
            .unwrap_or_else(|_| Err("the what-if thread panicked".to_owned()));
        Some(self.spec.verdict(req, r))
    }
}

impl Drop for WhatifValidator {
    /// Ends a running comparison early; its replicas and mirrors are torn down before the
    /// agent goes on exiting.
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some((_, h)) = self.running.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shadow::whatif::ReplicaProfile;

    fn spec() -> WhatifValidation {
        WhatifValidation {
            base: GroupSpec {
                name: "web".into(),
                prefix: "shd".into(),
                command: Default::default(),
                replicas_min: 1,
                replicas_max: 1,
                cpu_cores: Some(1.0),
                memory_bytes: Some(256 << 20),
                writable_paths: Vec::new(),
                addresses: Vec::new(),
                allow: Default::default(),
                restart: Default::default(),
                replica_mac: None,
            },
            mirror: WhatifMirror {
                interface: "eth9".to_owned(),
                direction: Default::default(),
                rules: Vec::new(),
                options: Default::default(),
            },
            duration: Duration::from_secs(1),
            load_share: 0.5,
            tolerance: ShrinkTolerance::default(),
        }
    }

    fn req(resource: Resource, from: f64, to: f64) -> ShrinkRequest {
        ShrinkRequest {
            cgroup: "web".to_owned(),
            resource,
            from,
            to,
        }
    }

    #[test]
    fn cpu_limits_are_scaled_by_the_load_share_memory_limits_are_not() {
        let s = spec();
        let (b, c) = s.comparison(&req(Resource::Cpu, 2.0, 1.0));
        assert_eq!((b.cpu_cores, c.cpu_cores), (Some(1.0), Some(0.5)));
        assert_eq!((b.memory_bytes, c.memory_bytes), (Some(256 << 20), None));
        let (b, c) = s.comparison(&req(Resource::Memory, 4e9, 3e9));
        assert_eq!(b.memory_bytes, Some(4_000_000_000));
        assert_eq!(c.memory_bytes, Some(3_000_000_000));
        assert_eq!((b.cpu_cores, c.cpu_cores), (Some(1.0), None));
    }

    #[test]
    fn the_verdict_uses_the_configured_tolerance_and_a_failed_run_fails() {
        let mut s = spec();
        let profile = |name: &str, p95: f64| {
            let mut p = ReplicaProfile {
                name: name.to_owned(),
                ..ReplicaProfile::default()
            };
            p.latency.replies = 100;
            p.latency.p95_ms = p95;
            p.latency.p99_ms = p95;
            p
        };
        let report = WhatifReport {
            duration_s: 1.0,
            baseline: profile("baseline", 10.0),
            candidates: vec![profile("proposed", 16.0)],
            verdicts: Vec::new(),
        };
        let o = s.verdict(req(Resource::Cpu, 1.0, 0.5), Ok(report.clone()));
        assert!(!o.pass, "{o:?}");
        assert!(o.reasons.iter().any(|r| r.contains("p95")), "{o:?}");
        assert!(o.report.is_some());
        s.tolerance.slack_ms = 10.0;
        assert!(s.verdict(req(Resource::Cpu, 1.0, 0.5), Ok(report)).pass);
        let o = s.verdict(req(Resource::Cpu, 1.0, 0.5), Err("no interface".into()));
        assert!(!o.pass && o.reasons[0].contains("no interface"), "{o:?}");
    }
}
