//! The what-if gate of forecast shrinks (pure: no I/O, no clock).
//!
//! A confident forecast may propose to shrink the primary. With a gate, such a shrink is
//! not written until a what-if replica (`shadow::whatif`) ran at the proposed limit beside
//! a baseline replica at the current one, on the same mirrored traffic, and kept its
//! latency within tolerance (`shadow::whatif::validate_shrink`). Meanwhile the limit is
//! held (`Rail::WhatifPending`). A pass lets shrinks down to the validated value through
//! for `valid_intervals`; a failure holds every shrink of that resource for
//! `retry_intervals` (`Rail::WhatifFailed`), after which the then-current proposal is
//! tried again. Steps up are never gated: what is observed and what is forecast to be
//! needed may always be given.

use serde::Serialize;

use super::policy::{Decision, Rail, Reason, Resource};

/// How long a verdict holds, in reconcile intervals.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct GateRule {
    /// After a pass at value `v`, shrinks to `v` or above need no new validation for this
    /// many intervals.
    pub valid_intervals: u64,
    /// After a failure, no shrink of the resource (and no new validation) for this many
    /// intervals.
    pub retry_intervals: u64,
}

impl Default for GateRule {
    fn default() -> Self {
        GateRule {
            valid_intervals: 300,
            retry_intervals: 300,
        }
    }
}

/// A shrink to validate on a what-if replica: from the current limit to the proposed one
/// (cores or bytes; `from` is the rails' max for an unlimited group).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShrinkRequest {
    pub cgroup: String,
    pub resource: Resource,
    pub from: f64,
    pub to: f64,
}

/// A validation's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShrinkOutcome {
    pub request: ShrinkRequest,
    pub pass: bool,
    /// Why it failed (empty on a pass), or why no verdict could be given.
    pub reasons: Vec<String>,
    /// The comparison's report (JSON of `shadow::whatif::WhatifReport`), when it ran.
    pub report: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
struct PerResource {
    /// A validation under way: the value it validates.
    pending: Option<f64>,
    /// The lowest validated value and the step until which it holds.
    passed: Option<(f64, u64)>,
    /// The step until which shrinks are refused after a failure.
    failed_until: Option<u64>,
}

/// What the gate did to one decision.
#[derive(Debug, Clone, PartialEq)]
pub enum Gated {
    /// Not a gated shrink, or a shrink within a validated value: unchanged.
    Unchanged,
    /// Cut to the validated value.
    Clipped,
    /// Held at the current limit until a verdict; `Some`: a validation should be started.
    Held(Option<ShrinkRequest>),
    /// Held at the current limit: a recent validation failed.
    Refused,
}

/// The gate of one managed group.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ShrinkGate {
    pub rule: GateRule,
    cpu: PerResource,
    memory: PerResource,
}

impl ShrinkGate {
    pub fn new(rule: GateRule) -> ShrinkGate {
        ShrinkGate {
            rule,
            ..ShrinkGate::default()
        }
    }

    fn slot(&mut self, r: Resource) -> Option<&mut PerResource> {
        match r {
            Resource::Cpu => Some(&mut self.cpu),
            Resource::Memory => Some(&mut self.memory),
            Resource::Cpuset => None,
        }
    }

    /// Whether a validation of `resource` is under way.
    pub fn pending(&self, resource: Resource) -> Option<f64> {
        match resource {
            Resource::Cpu => self.cpu.pending,
            Resource::Memory => self.memory.pending,
            Resource::Cpuset => None,
        }
    }

    /// Gates `d` at reconcile step `step`. A forecast shrink within bounds (`old` is not
    /// above `max`) is held unless a pass covers it; the decision is changed in place (`new`
    /// back to `old`, or cut to the validated value, with the rail that did it).
    pub fn gate(&mut self, cgroup: &str, d: &mut Decision, max: f64, step: u64) -> Gated {
        let from = d.old.unwrap_or(max);
        let Some(to) = d.new else {
            return Gated::Unchanged;
        };
        let shrink = to < from && d.old.is_none_or(|o| o <= max);
        if !shrink || d.reason != Reason::Forecast {
            return Gated::Unchanged;
        }
        let resource = d.resource;
        let Some(s) = self.slot(resource) else {
            return Gated::Unchanged;
        };
        if s.failed_until.is_some_and(|u| step < u) {
            d.new = d.old;
            d.rails.push(Rail::WhatifFailed);
            return Gated::Refused;
        }
        s.failed_until = None;
        if let Some((v, until)) = s.passed {
            if step < until && v < from {
                if to >= v {
                    return Gated::Unchanged;
                }
                d.new = Some(v);
                d.rails.push(Rail::WhatifValidated);
                return Gated::Clipped;
            }
            if step >= until {
                s.passed = None;
            }
        }
        d.new = d.old;
        d.rails.push(Rail::WhatifPending);
        if s.pending.is_some() {
            return Gated::Held(None);
        }
        Gated::Held(Some(ShrinkRequest {
            cgroup: cgroup.to_owned(),
            resource,
            from,
            to,
        }))
    }

    /// A validation of `req` was started.
    pub fn started(&mut self, req: &ShrinkRequest) {
        if let Some(s) = self.slot(req.resource) {
            s.pending = Some(req.to);
        }
    }

    /// A verdict arrived at step `step`.
    pub fn outcome(&mut self, o: &ShrinkOutcome, step: u64) {
        let rule = self.rule;
        if let Some(s) = self.slot(o.request.resource) {
            s.pending = None;
            if o.pass {
                s.passed = Some((o.request.to, step + rule.valid_intervals));
                s.failed_until = None;
            } else {
                s.failed_until = Some(step + rule.retry_intervals);
                s.passed = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shrink(old: f64, new: f64) -> Decision {
        Decision {
            resource: Resource::Cpu,
            old: Some(old),
            new: Some(new),
            target: Some(new),
            reason: Reason::Forecast,
            rails: Vec::new(),
            forecast: None,
            confidence: None,
        }
    }

    fn outcome(req: &ShrinkRequest, pass: bool) -> ShrinkOutcome {
        ShrinkOutcome {
            request: req.clone(),
            pass,
            reasons: Vec::new(),
            report: None,
        }
    }

    #[test]
    fn a_forecast_shrink_waits_for_its_validation_and_a_pass_lets_it_through() {
        let mut g = ShrinkGate::new(GateRule {
            valid_intervals: 10,
            retry_intervals: 10,
        });
        let mut d = shrink(1.0, 0.6);
        let Gated::Held(Some(req)) = g.gate("web", &mut d, 2.0, 1) else {
            panic!("not held with a request: {d:?}");
        };
        assert_eq!((req.from, req.to, req.resource), (1.0, 0.6, Resource::Cpu));
        assert_eq!(d.new, Some(1.0));
        assert_eq!(d.rails, vec![Rail::WhatifPending]);
        g.started(&req);
        // While it runs: held, no second request.
        let mut d = shrink(1.0, 0.5);
        assert_eq!(g.gate("web", &mut d, 2.0, 2), Gated::Held(None));
        assert_eq!(d.new, Some(1.0));
        g.outcome(&outcome(&req, true), 3);
        // Down to the validated value: through; below it: cut to it.
        let mut d = shrink(1.0, 0.7);
        assert_eq!(g.gate("web", &mut d, 2.0, 4), Gated::Unchanged);
        assert_eq!(d.new, Some(0.7));
        let mut d = shrink(0.7, 0.4);
        assert_eq!(g.gate("web", &mut d, 2.0, 5), Gated::Clipped);
        assert_eq!(d.new, Some(0.6));
        assert_eq!(d.rails, vec![Rail::WhatifValidated]);
        // At the validated value, a further shrink needs its own validation.
        let mut d = shrink(0.6, 0.4);
        assert!(matches!(
            g.gate("web", &mut d, 2.0, 6),
            Gated::Held(Some(_))
        ));
        // A pass expires.
        let mut g2 = g.clone();
        let mut d = shrink(1.0, 0.8);
        assert!(matches!(
            g2.gate("web", &mut d, 2.0, 13),
            Gated::Held(Some(_))
        ));
    }

    #[test]
    fn a_failed_validation_refuses_shrinks_until_the_retry() {
        let mut g = ShrinkGate::new(GateRule {
            valid_intervals: 10,
            retry_intervals: 5,
        });
        let mut d = shrink(1.0, 0.2);
        let Gated::Held(Some(req)) = g.gate("web", &mut d, 2.0, 1) else {
            panic!("not held");
        };
        g.started(&req);
        g.outcome(&outcome(&req, false), 2);
        for step in 3..7 {
            let mut d = shrink(1.0, 0.9);
            assert_eq!(g.gate("web", &mut d, 2.0, step), Gated::Refused, "{step}");
            assert_eq!(d.new, Some(1.0));
            assert_eq!(d.rails, vec![Rail::WhatifFailed]);
        }
        let mut d = shrink(1.0, 0.3);
        assert!(matches!(
            g.gate("web", &mut d, 2.0, 7),
            Gated::Held(Some(_))
        ));
    }

    #[test]
    fn steps_up_reactive_changes_and_forced_bounds_are_not_gated() {
        let mut g = ShrinkGate::new(GateRule::default());
        let mut up = shrink(1.0, 1.5);
        assert_eq!(g.gate("web", &mut up, 2.0, 1), Gated::Unchanged);
        assert_eq!(up.new, Some(1.5));
        // Above max: the rails bring it down without a what-if.
        let mut over = shrink(3.0, 2.0);
        assert_eq!(g.gate("web", &mut over, 2.0, 1), Gated::Unchanged);
        let mut hold = shrink(1.0, 1.0);
        assert_eq!(g.gate("web", &mut hold, 2.0, 1), Gated::Unchanged);
        let mut reactive = shrink(1.0, 0.5);
        reactive.reason = Reason::Hold;
        assert_eq!(g.gate("web", &mut reactive, 2.0, 1), Gated::Unchanged);
        // Imposing a first limit on an unlimited group is a shrink from max.
        let mut first = shrink(1.0, 0.5);
        first.old = None;
        let Gated::Held(Some(req)) = g.gate("web", &mut first, 2.0, 1) else {
            panic!("not held");
        };
        assert_eq!((req.from, req.to), (2.0, 0.5));
        assert_eq!(first.new, None);
        // Memory and CPU are gated apart.
        g.started(&req);
        let mut mem = shrink(4e9, 3e9);
        mem.resource = Resource::Memory;
        assert!(matches!(
            g.gate("web", &mut mem, 8e9, 2),
            Gated::Held(Some(_))
        ));
    }
}
