//! Autoscaling of a shadow group from the load measured on its replicas, and the mirror's
//! sample rate as the pressure valve once the group's budget is spent.
//!
//! [`decide`] is pure: from the group's load over the last interval (CPU against its cap,
//! memory against its cap, run-queue latency of its replicas, backlog of unanswered
//! mirrored requests) it returns one action with the reason for it. `run` applies it
//! (`run::scale_group`, `Mirror::set_sample_rate`), logs it, publishes it in the status
//! file and counts it in `shadow_autoscale_decisions_total{action}`.
//!
//! Order of preference: a hot group grows while it is below `replicas_max`; at the maximum,
//! with the budget (CPU or memory cap) used beyond `budget_high`, the mirror's sample rate
//! is lowered (times `sample_step`, not below `sample_min`). When there is room again
//! (budget used below `budget_low`, nothing hot), the sample rate comes back first (divided
//! by `sample_step`, up to the configured rate), then idle replicas are removed down to
//! `replicas_min`. No change within `cooldown` of the previous one.

use std::time::Duration;

/// `[shadow.autoscale]`.
#[derive(Clone, Debug, PartialEq)]
pub struct AutoscaleSpec {
    /// Hot: CPU per replica (cores) at or above this.
    pub scale_up_cores: f64,
    /// Idle: CPU per replica below this (and nothing else hot).
    pub scale_down_cores: f64,
    /// Hot: run-queue latency p99 of the replicas (µs) at or above this (0: not used).
    pub scale_up_runq_p99_us: f64,
    /// Hot: unanswered mirrored requests per replica in the interval at or above this
    /// (0: not used).
    pub scale_up_backlog: u64,
    /// The budget is exhausted when the group uses this fraction of its CPU or memory cap.
    pub budget_high: f64,
    /// The sample rate is raised again only below this fraction of the caps.
    pub budget_low: f64,
    /// Factor applied to the sample rate when lowering it (divides it when raising).
    pub sample_step: f64,
    /// The sample rate never goes below this.
    pub sample_min: f64,
    /// Minimum time between two changes.
    pub cooldown: Duration,
}

impl Default for AutoscaleSpec {
    fn default() -> Self {
        AutoscaleSpec {
            scale_up_cores: 0.5,
            scale_down_cores: 0.1,
            scale_up_runq_p99_us: 20_000.0,
            scale_up_backlog: 0,
            budget_high: 0.9,
            budget_low: 0.6,
            sample_step: 0.5,
            sample_min: 0.01,
            cooldown: Duration::from_secs(10),
        }
    }
}

impl AutoscaleSpec {
    /// Check the values; `Err((key, why))` with the key under `shadow.autoscale`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let key = |k: &str| format!("shadow.autoscale.{k}");
        if self.scale_up_cores.is_nan() || self.scale_up_cores <= 0.0 {
            return Err((key("scale_up_cores"), "must be > 0".into()));
        }
        if !(self.scale_down_cores >= 0.0 && self.scale_down_cores < self.scale_up_cores) {
            return Err((
                key("scale_down_cores"),
                format!(
                    "{} must be >= 0 and below scale_up_cores ({})",
                    self.scale_down_cores, self.scale_up_cores
                ),
            ));
        }
        if self.scale_up_runq_p99_us.is_nan() || self.scale_up_runq_p99_us < 0.0 {
            return Err((key("scale_up_runq_p99_us"), "must be >= 0".into()));
        }
        if !(self.budget_low > 0.0 && self.budget_low < self.budget_high && self.budget_high <= 1.0)
        {
            return Err((
                key("budget_high"),
                format!(
                    "need 0 < budget_low ({}) < budget_high ({}) <= 1",
                    self.budget_low, self.budget_high
                ),
            ));
        }
        if !(self.sample_step > 0.0 && self.sample_step < 1.0) {
            return Err((key("sample_step"), "must be in (0, 1)".into()));
        }
        if !(self.sample_min > 0.0 && self.sample_min <= 1.0) {
            return Err((key("sample_min"), "must be in (0, 1]".into()));
        }
        Ok(())
    }
}

/// The group's limits and the configured sample rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bounds {
    pub replicas_min: u32,
    pub replicas_max: u32,
    /// The group's CPU cap (cores) and memory cap (bytes), where set.
    pub cpu_cap: Option<f64>,
    pub memory_cap: Option<u64>,
    /// The mirror's configured sample rate: the rate is never raised above it.
    pub sample_max: f64,
}

/// What the group did over the last interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Load {
    pub replicas: u32,
    /// CPU used by the whole group (cores, mean over the interval).
    pub cpu_cores: f64,
    pub memory_bytes: u64,
    /// Highest run-queue latency p99 among the replicas (µs).
    pub runq_p99_us: f64,
    /// Mirrored requests started minus replies in the interval (all replicas).
    pub backlog: u64,
    /// The mirror's current sample rate.
    pub sample_rate: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Hold,
    ScaleUp,
    ScaleDown,
    LowerSample,
    RaiseSample,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Hold => "hold",
            Action::ScaleUp => "scale_up",
            Action::ScaleDown => "scale_down",
            Action::LowerSample => "lower_sample",
            Action::RaiseSample => "raise_sample",
        }
    }
}

/// One decision: the action, the replica count and sample rate it leads to, and why.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Decision {
    pub action: Action,
    pub replicas: u32,
    pub sample_rate: f64,
    pub reason: String,
}

/// Fraction of the tightest cap in use (0 with no caps).
pub fn budget_used(b: &Bounds, load: &Load) -> f64 {
    let cpu = b.cpu_cap.map_or(0.0, |c| load.cpu_cores / c);
    let mem = b
        .memory_cap
        .filter(|m| *m > 0)
        .map_or(0.0, |m| load.memory_bytes as f64 / m as f64);
    cpu.max(mem)
}

/// Decide one step. `since_change`: time since the last change (`None`: none yet).
pub fn decide(
    spec: &AutoscaleSpec,
    b: &Bounds,
    load: &Load,
    since_change: Option<Duration>,
) -> Decision {
    let n = load.replicas.max(1);
    let per = load.cpu_cores / n as f64;
    let used = budget_used(b, load);
    let exhausted = used >= spec.budget_high;
    let hold = |reason: String| Decision {
        action: Action::Hold,
        replicas: load.replicas,
        sample_rate: load.sample_rate,
        reason,
    };
    let hot = if per >= spec.scale_up_cores {
        Some(format!(
            "CPU per replica {per:.3} cores >= scale_up_cores {}",
            spec.scale_up_cores
        ))
    } else if spec.scale_up_runq_p99_us > 0.0 && load.runq_p99_us >= spec.scale_up_runq_p99_us {
        Some(format!(
            "run-queue latency p99 {:.0} us >= scale_up_runq_p99_us {}",
            load.runq_p99_us, spec.scale_up_runq_p99_us
        ))
    } else if spec.scale_up_backlog > 0 && load.backlog / n as u64 >= spec.scale_up_backlog {
        Some(format!(
            "backlog {} unanswered requests per replica >= scale_up_backlog {}",
            load.backlog / n as u64,
            spec.scale_up_backlog
        ))
    } else {
        None
    };
    let lower = || (load.sample_rate * spec.sample_step).max(spec.sample_min);
    let decision = match hot {
        Some(why) if load.replicas < b.replicas_max => Decision {
            action: Action::ScaleUp,
            replicas: load.replicas + 1,
            sample_rate: load.sample_rate,
            reason: why,
        },
        Some(why) if exhausted && load.sample_rate > spec.sample_min => Decision {
            action: Action::LowerSample,
            replicas: load.replicas,
            sample_rate: lower(),
            reason: format!(
                "at replicas_max {} with {:.0}% of the group's budget used (>= budget_high {:.0}%): {why}",
                b.replicas_max,
                used * 100.0,
                spec.budget_high * 100.0
            ),
        },
        Some(why) => hold(format!(
            "{why}, but at replicas_max {} and the budget is not exhausted ({:.0}% used) or the sample rate is at sample_min",
            b.replicas_max,
            used * 100.0
        )),
        None if exhausted && load.sample_rate > spec.sample_min => Decision {
            action: Action::LowerSample,
            replicas: load.replicas,
            sample_rate: lower(),
            reason: format!(
                "{:.0}% of the group's budget used (>= budget_high {:.0}%)",
                used * 100.0,
                spec.budget_high * 100.0
            ),
        },
        None if load.sample_rate < b.sample_max && used < spec.budget_low => Decision {
            action: Action::RaiseSample,
            replicas: load.replicas,
            sample_rate: (load.sample_rate / spec.sample_step).min(b.sample_max),
            reason: format!(
                "room in the budget ({:.0}% used < budget_low {:.0}%) and the sample rate {} is below the configured {}",
                used * 100.0,
                spec.budget_low * 100.0,
                load.sample_rate,
                b.sample_max
            ),
        },
        None if load.replicas > b.replicas_min && per < spec.scale_down_cores => Decision {
            action: Action::ScaleDown,
            replicas: load.replicas - 1,
            sample_rate: load.sample_rate,
            reason: format!(
                "CPU per replica {per:.3} cores < scale_down_cores {}",
                spec.scale_down_cores
            ),
        },
        None => hold(format!(
            "within bounds: {per:.3} cores per replica, {:.0}% of the budget used",
            used * 100.0
        )),
    };
    match since_change {
        Some(t) if decision.action != Action::Hold && t < spec.cooldown => hold(format!(
            "cooldown ({:.1} s of {:.1} s since the last change) holds: {}",
            t.as_secs_f64(),
            spec.cooldown.as_secs_f64(),
            decision.reason
        )),
        _ => decision,
    }
}

/// Measures a running group's [`Load`] between two calls: CPU from the group's cgroup2
/// `cpu.stat` (hierarchical, so replicas added or removed in between count), memory from
/// cgroupfs, run-queue latency p99 from the profiler's histograms of the replicas, backlog
/// from the mirror's latency counters (requests started minus replies).
#[derive(Default)]
pub struct LoadMeter {
    last: Option<(std::time::Instant, u64)>,
    rq: std::collections::HashMap<u64, crate::profile::hist::Buckets>,
    lat: Option<(u64, u64)>,
}

/// `usage_usec` of a cgroup2 `cpu.stat`.
pub fn cpu_usage_usec(dir: &std::path::Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
    crate::profile::cgroupfs::stat_value(&text, "usage_usec")
}

impl LoadMeter {
    pub fn measure(
        &mut self,
        group: &crate::shadow::ShadowGroup,
        profiler: &crate::profile::Profiler,
        mirror: Option<&crate::mirror::Mirror>,
        sample_rate: f64,
    ) -> Load {
        let now = std::time::Instant::now();
        let dir = group.cgroup().unified_path();
        let usage = cpu_usage_usec(dir).unwrap_or(0);
        let cpu_cores = match self.last {
            Some((t, u)) => {
                let dt = now.duration_since(t).as_secs_f64();
                if dt > 0.0 {
                    usage.saturating_sub(u) as f64 / 1e6 / dt
                } else {
                    0.0
                }
            }
            None => 0.0,
        };
        self.last = Some((now, usage));
        let root = std::path::Path::new(crate::sys::cgroup::DEFAULT_ROOT);
        let memory_bytes = crate::profile::cgroupfs::memory_source(root, dir)
            .as_ref()
            .and_then(crate::profile::cgroupfs::read_memory)
            .map_or(0, |m| m.usage_bytes);
        let mut runq_p99_us: f64 = 0.0;
        let mut seen = std::collections::HashMap::new();
        for r in group.replicas() {
            let id = r.cgroup().id();
            if let Ok(Some(b)) = profiler.rq_buckets(id) {
                if let Some(prev) = self.rq.get(&id) {
                    let q = crate::profile::hist::quantiles(&crate::profile::hist::delta(&b, prev));
                    runq_p99_us = runq_p99_us.max(q.p99_us);
                }
                seen.insert(id, b);
            }
        }
        self.rq = seen;
        let mut backlog = 0;
        if let Some(Ok(lat)) = mirror.map(|m| m.latency()) {
            let req: u64 = lat.iter().map(|c| c.requests).sum();
            let done: u64 = lat.iter().map(|c| c.replies + c.expired).sum();
            if let Some((r0, d0)) = self.lat {
                backlog = req
                    .saturating_sub(r0)
                    .saturating_sub(done.saturating_sub(d0));
            }
            self.lat = Some((req, done));
        }
        Load {
            replicas: group.replicas().count() as u32,
            cpu_cores,
            memory_bytes,
            runq_p99_us,
            backlog,
            sample_rate,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds() -> Bounds {
        Bounds {
            replicas_min: 1,
            replicas_max: 3,
            cpu_cap: Some(1.0),
            memory_cap: Some(1 << 30),
            sample_max: 1.0,
        }
    }

    fn load(replicas: u32, cpu: f64, sample: f64) -> Load {
        Load {
            replicas,
            cpu_cores: cpu,
            sample_rate: sample,
            ..Load::default()
        }
    }

    fn spec() -> AutoscaleSpec {
        AutoscaleSpec {
            scale_up_cores: 0.3,
            scale_down_cores: 0.05,
            ..AutoscaleSpec::default()
        }
    }

    #[test]
    fn hot_group_grows_then_lowers_the_sample_at_max() {
        let d = decide(&spec(), &bounds(), &load(1, 0.4, 1.0), None);
        assert_eq!((d.action, d.replicas), (Action::ScaleUp, 2), "{d:?}");
        assert!(d.reason.contains("CPU per replica 0.400"), "{}", d.reason);
        let d = decide(&spec(), &bounds(), &load(2, 0.7, 1.0), None);
        assert_eq!(d.action, Action::ScaleUp);
        // At max, budget 95% used: the sample rate halves.
        let d = decide(&spec(), &bounds(), &load(3, 0.95, 1.0), None);
        assert_eq!(d.action, Action::LowerSample, "{d:?}");
        assert_eq!((d.replicas, d.sample_rate), (3, 0.5));
        assert!(d.reason.contains("replicas_max 3"), "{}", d.reason);
        // Never below sample_min.
        let d = decide(&spec(), &bounds(), &load(3, 0.95, 0.015), None);
        assert_eq!(d.sample_rate, 0.01);
        let d = decide(&spec(), &bounds(), &load(3, 0.95, 0.01), None);
        assert_eq!(d.action, Action::Hold);
        // Hot at max but budget fine: hold.
        let s = AutoscaleSpec {
            scale_up_cores: 0.2,
            ..spec()
        };
        let d = decide(&s, &bounds(), &load(3, 0.8, 1.0), None);
        assert_eq!(d.action, Action::Hold, "{d:?}");
        assert!(d.reason.contains("but at replicas_max 3"), "{}", d.reason);
    }

    #[test]
    fn memory_budget_and_runq_and_backlog_count() {
        let mut l = load(3, 0.1, 1.0);
        l.memory_bytes = (1 << 30) / 100 * 95;
        let d = decide(&spec(), &bounds(), &l, None);
        assert_eq!(d.action, Action::LowerSample, "{d:?}");
        let mut l = load(1, 0.1, 1.0);
        l.runq_p99_us = 50_000.0;
        let d = decide(&spec(), &bounds(), &l, None);
        assert_eq!(d.action, Action::ScaleUp);
        assert!(d.reason.contains("run-queue"), "{}", d.reason);
        let mut s = spec();
        s.scale_up_backlog = 10;
        let mut l = load(2, 0.1, 1.0);
        l.backlog = 25;
        let d = decide(&s, &bounds(), &l, None);
        assert_eq!(d.action, Action::ScaleUp);
        assert!(d.reason.contains("backlog 12"), "{}", d.reason);
    }

    #[test]
    fn idle_group_raises_the_sample_first_then_shrinks() {
        let d = decide(&spec(), &bounds(), &load(3, 0.05, 0.25), None);
        assert_eq!(
            (d.action, d.sample_rate),
            (Action::RaiseSample, 0.5),
            "{d:?}"
        );
        let b = Bounds {
            sample_max: 0.4,
            ..bounds()
        };
        let d = decide(&spec(), &b, &load(3, 0.05, 0.25), None);
        assert_eq!(d.sample_rate, 0.4, "never above the configured rate");
        let d = decide(&spec(), &bounds(), &load(3, 0.05, 1.0), None);
        assert_eq!((d.action, d.replicas), (Action::ScaleDown, 2), "{d:?}");
        let d = decide(&spec(), &bounds(), &load(1, 0.0, 1.0), None);
        assert_eq!(d.action, Action::Hold, "never below replicas_min");
        // Between budget_low and budget_high with a lowered rate: no raise.
        let d = decide(&spec(), &bounds(), &load(3, 0.7, 0.5), None);
        assert_eq!(d.action, Action::Hold, "{d:?}");
    }

    #[test]
    fn cooldown_holds_changes() {
        let d = decide(
            &spec(),
            &bounds(),
            &load(1, 0.4, 1.0),
            Some(Duration::from_secs(2)),
        );
        assert_eq!(d.action, Action::Hold);
        assert!(d.reason.starts_with("cooldown"), "{}", d.reason);
        let d = decide(
            &spec(),
            &bounds(),
            &load(1, 0.4, 1.0),
            Some(Duration::from_secs(11)),
        );
        assert_eq!(d.action, Action::ScaleUp);
    }

    #[test]
    fn no_caps_means_no_budget() {
        let b = Bounds {
            cpu_cap: None,
            memory_cap: None,
            ..bounds()
        };
        let d = decide(&spec(), &b, &load(3, 2.0, 1.0), None);
        assert_eq!(d.action, Action::Hold);
        assert_eq!(budget_used(&b, &load(3, 2.0, 1.0)), 0.0);
    }

    #[test]
    fn validation_names_the_key() {
        let bad = AutoscaleSpec {
            scale_down_cores: 0.6,
            ..AutoscaleSpec::default()
        };
        assert_eq!(
            bad.validate().unwrap_err().0,
            "shadow.autoscale.scale_down_cores"
        );
        let bad = AutoscaleSpec {
            sample_step: 1.0,
            ..AutoscaleSpec::default()
        };
        assert_eq!(
            bad.validate().unwrap_err().0,
            "shadow.autoscale.sample_step"
        );
        assert!(AutoscaleSpec::default().validate().is_ok());
    }
}
