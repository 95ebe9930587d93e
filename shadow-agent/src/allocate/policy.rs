//! The decision of one interval, for one resource: pure functions of the current limit, what
//! was observed and the forecast, plus a little per-resource memory ([`ResourceState`]).
//!
//! Order of evaluation in [`decide`]:
//! 1. **Target.** A confident forecast ([`ConfidenceRule::assess`]) gives
//!    `upper × (1 + headroom)`; below the current limit (a shrink) at least
//!    `shrink_upper × (1 + headroom)`, the bound over the intervals the shrink commits to.
//!    Reactive signals ([`Signals::active`]) give
//!    `current × (1 + step_up)`; with both, the larger wins. Neither, with the reactive
//!    scale-in configured ([`Rails::scale_in_below`]) and usage below that band for
//!    [`Rails::scale_in_after_intervals`] intervals: the recent peak usage over the middle
//!    of the two bands. Nothing: hold.
//! 2. **Rails**, each recorded in [`Decision::rails`] when it changed the outcome:
//!    usage floor (memory: usage + margin), per-resource min/max, hysteresis (ignore changes
//!    smaller than a fraction of the current limit), shrink hold (a forecast shrink is made
//!    only after it has been proposed K intervals in a row; a scale-in has its streak), maximum
//!    step per interval, cooldown after a change (a confident forecast's growth and an
//!    urgent step up, OOM or full pressure, pass through it).
//!
//! An unlimited current value (`None`) counts as the resource's `max` for stepping, so a first
//! limit is never above `max`, and imposing one is a shrink that needs the K-interval hold.

use serde::{Deserialize, Serialize};

/// What the allocator adjusts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resource {
    /// CPU quota in cores.
    Cpu,
    /// Memory limit in bytes.
    Memory,
    /// CPUs the group may run on.
    Cpuset,
}

impl Resource {
    /// Stable name (`cpu`, `memory`, `cpuset`).
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Cpu => "cpu",
            Resource::Memory => "memory",
            Resource::Cpuset => "cpuset",
        }
    }
}

/// One forecast as the allocator consumes it, in the resource's unit (cores or bytes).
///
/// The forecaster fills this from its output: the largest point and upper bound over the
/// lead time, the interval at `level`, and the empirical coverage of its recent intervals at
/// that level (the fraction of recent actual values that fell inside).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ForecastInput {
    /// Point forecast.
    pub point: f64,
    /// Lower bound of the prediction interval.
    pub lower: f64,
    /// Upper bound of the prediction interval.
    pub upper: f64,
    /// Nominal coverage of the interval in (0, 1), e.g. 0.9.
    pub level: f64,
    /// Recent empirical coverage at `level` (None: unknown, never confident).
    pub coverage: Option<f64>,
    /// How many intervals ahead the bound covers.
    pub horizon_intervals: u32,
    /// The largest upper bound over the time a shrink commits the limit to (the lead time
    /// plus the cooldown after a change, in which only a shortage already suffered or a
    /// forecast's growth undoes it), where the forecaster gives it: a shrink never goes
    /// below it (plus headroom).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shrink_upper: Option<f64>,
}

/// When a forecast is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConfidenceRule {
    /// Largest `(upper − lower) / max(point, tiny)` accepted. Default 0.5.
    pub max_rel_width: f64,
    /// Largest `level − coverage` accepted (under-coverage: bounds too often exceeded).
    /// Default 0.05.
    pub coverage_tolerance: f64,
    /// Largest `coverage − level` accepted (over-coverage is safe; the width rule already
    /// bounds the slack it costs). Default 0.10.
    pub over_coverage_tolerance: f64,
}

impl Default for ConfidenceRule {
    fn default() -> Self {
        ConfidenceRule {
            max_rel_width: 0.5,
            coverage_tolerance: 0.05,
            over_coverage_tolerance: 0.10,
        }
    }
}

/// The verdict on one forecast.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Confidence {
    pub confident: bool,
    /// `(upper − lower) / point`.
    pub rel_width: f64,
    pub coverage: Option<f64>,
    /// Why it is (not) trusted.
    pub why: Verdict,
}

/// Why a forecast is (not) trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Narrow interval, coverage on target.
    Confident,
    /// Non-finite values or upper < lower.
    Malformed,
    /// The interval is too wide relative to the level.
    TooWide,
    /// No recent coverage given.
    CoverageUnknown,
    /// Recent coverage too far from the nominal level.
    CoverageOffNominal,
}

impl ConfidenceRule {
    /// Judges `f`.
    pub fn assess(&self, f: &ForecastInput) -> Confidence {
        let finite = [f.point, f.lower, f.upper, f.level]
            .iter()
            .all(|v| v.is_finite());
        let rel_width = (f.upper - f.lower) / f.point.abs().max(1e-9);
        let verdict = |confident, why| Confidence {
            confident,
            rel_width,
            coverage: f.coverage,
            why,
        };
        if !finite || f.upper < f.lower || f.upper < 0.0 {
            return verdict(false, Verdict::Malformed);
        }
        if rel_width > self.max_rel_width {
            return verdict(false, Verdict::TooWide);
        }
        match f.coverage {
            None => verdict(false, Verdict::CoverageUnknown),
            Some(c)
                if f.level - c > self.coverage_tolerance
                    || c - f.level > self.over_coverage_tolerance =>
            {
                verdict(false, Verdict::CoverageOffNominal)
            }
            Some(_) => verdict(true, Verdict::Confident),
        }
    }
}

/// Thresholds of the reactive fallback.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReactiveRule {
    /// Usage at or above this fraction of the limit is a signal. Default 0.9.
    pub near_limit: f64,
    /// Throttled periods / periods over the interval at or above this is a signal. Default 0.05.
    pub throttle_ratio: f64,
    /// PSI `some avg10` (percent) at or above this is a signal. Default 20.
    pub psi_some_avg10: f64,
    /// PSI `full avg10` (percent) at or above this is an urgent signal. Default 5.
    pub psi_full_avg10: f64,
    /// Fraction a reactive step adds to the current limit. Default 0.25.
    pub step_up: f64,
}

impl Default for ReactiveRule {
    fn default() -> Self {
        ReactiveRule {
            near_limit: 0.9,
            throttle_ratio: 0.05,
            psi_some_avg10: 20.0,
            psi_full_avg10: 5.0,
            step_up: 0.25,
        }
    }
}

/// Safety rails of one resource (units: cores or bytes).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rails {
    /// Never below this.
    pub min: f64,
    /// Never above this; an unlimited limit counts as this for stepping.
    pub max: f64,
    /// Largest increase per interval, as a fraction of the current limit.
    pub max_step_up: f64,
    /// Largest decrease per interval, as a fraction of the current limit.
    pub max_step_down: f64,
    /// Intervals after a change during which no other change is made (urgent steps up
    /// excepted).
    pub cooldown_intervals: u32,
    /// Changes smaller than this fraction of the current limit are not made.
    pub hysteresis: f64,
    /// A shrink is made only after a confident forecast proposed it this many intervals in a
    /// row (K).
    pub shrink_hold_intervals: u32,
    /// Floor `usage × (1 + floor_margin_frac) + floor_margin_abs`; both 0 disables it.
    pub floor_margin_frac: f64,
    pub floor_margin_abs: f64,
    /// Reactive scale-in (target tracking): usage below this fraction of the limit for
    /// `scale_in_after_intervals` intervals in a row, with no signal and no confident
    /// forecast, steps the limit down towards the peak usage of the last N to 2N − 1
    /// intervals. 0 disables it (default: off for both resources).
    #[serde(default)]
    pub scale_in_below: f64,
    /// Consecutive intervals below `scale_in_below` before a reactive scale-in; 0: off.
    #[serde(default)]
    pub scale_in_after_intervals: u32,
    /// For this many intervals after the limit was short (CPU throttled, a memory limit hit
    /// or OOM), no shrink goes below one reactive step above the limit that was short
    /// (`limit × (1 + step_up)`): the demand has just shown that limit is too small,
    /// whatever a forecast of the mean usage says. 0: off.
    #[serde(default)]
    pub shortage_memory_intervals: u32,
}

impl Rails {
    /// Defaults for a CPU quota: 0.05..`cores` cores, +100%/−20% per interval, cooldown 2,
    /// hysteresis 5%, K = 3, no usage floor (CPU is compressible).
    pub fn cpu(cores: f64) -> Rails {
        Rails {
            min: 0.05,
            max: cores,
            max_step_up: 1.0,
            max_step_down: 0.2,
            cooldown_intervals: 2,
            hysteresis: 0.05,
            shrink_hold_intervals: 3,
            floor_margin_frac: 0.0,
            floor_margin_abs: 0.0,
            scale_in_below: 0.0,
            scale_in_after_intervals: 0,
            shortage_memory_intervals: 0,
        }
    }

    /// Defaults for a memory limit: 64 MiB..`bytes`, +50%/−10% per interval, cooldown 3,
    /// hysteresis 5%, K = 5, floor usage + 10% + 32 MiB.
    pub fn memory(bytes: f64) -> Rails {
        Rails {
            min: 64.0 * 1024.0 * 1024.0,
            max: bytes,
            max_step_up: 0.5,
            max_step_down: 0.1,
            cooldown_intervals: 3,
            hysteresis: 0.05,
            shrink_hold_intervals: 5,
            floor_margin_frac: 0.10,
            floor_margin_abs: 32.0 * 1024.0 * 1024.0,
            scale_in_below: 0.0,
            scale_in_after_intervals: 0,
            shortage_memory_intervals: 0,
        }
    }

    /// Checks the values; `Err((key, reason))` names the offending key.
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        let fin = |v: f64| v.is_finite() && v >= 0.0;
        if !fin(self.min) || self.min <= 0.0 {
            return Err(("min", "must be a positive number"));
        }
        if !fin(self.max) || self.max < self.min {
            return Err(("max", "must be a number >= min"));
        }
        if !fin(self.max_step_up) || self.max_step_up <= 0.0 {
            return Err(("max_step_up", "must be a positive fraction"));
        }
        if !fin(self.max_step_down) || self.max_step_down >= 1.0 {
            return Err(("max_step_down", "must be a fraction in [0, 1)"));
        }
        if !fin(self.hysteresis) || self.hysteresis >= 1.0 {
            return Err(("hysteresis", "must be a fraction in [0, 1)"));
        }
        if !fin(self.floor_margin_frac) || !fin(self.floor_margin_abs) {
            return Err(("floor_margin", "must be non-negative numbers"));
        }
        if !fin(self.scale_in_below) || self.scale_in_below >= 1.0 {
            return Err(("scale_in_below", "must be a fraction in [0, 1)"));
        }
        Ok(())
    }

    /// [`Rails::validate`], and the scale-in band against `policy`'s near-limit band.
    pub fn validate_with(&self, policy: &PolicyConfig) -> Result<(), (&'static str, &'static str)> {
        self.validate()?;
        if self.scale_in_below > 0.0 && self.scale_in_below >= policy.reactive.near_limit {
            return Err((
                "scale_in_below",
                "must be below policy.reactive.near_limit (the two bands would overlap and \
                 the limit would flap)",
            ));
        }
        Ok(())
    }
}

/// The decision policy: confidence, headroom, reactive thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    pub confidence: ConfidenceRule,
    /// Fraction added to a confident forecast's upper bound. Default 0.15.
    pub headroom: f64,
    pub reactive: ReactiveRule,
    /// Per-series calibration of the forecast target towards this shortage rate (fraction of
    /// intervals short: throttled, OOM, limit hit), online as adaptive conformal inference
    /// does: the target is multiplied by a scale that grows by `exp(gain × (1 − target))` after
    /// a short interval and shrinks by `exp(−gain × target)` after any other, within
    /// [0.5, 2]. None (default): off.
    pub shortage_target: Option<f64>,
}

/// Step size of the shortage calibration (see [`PolicyConfig::shortage_target`]).
pub const CALIBRATION_GAIN: f64 = 0.05;

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            confidence: ConfidenceRule::default(),
            headroom: 0.15,
            reactive: ReactiveRule::default(),
            shortage_target: None,
        }
    }
}

/// What was observed over the last interval for one resource.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Signals {
    /// Mean usage over the interval (cores) or current usage (bytes); None if unknown.
    pub usage: Option<f64>,
    /// Throttled periods / periods over the interval (CPU).
    pub throttled_ratio: Option<f64>,
    /// Throttled periods added during the interval (CPU).
    pub throttled_periods: u64,
    /// Throttled time over the interval's length (CPU, in cores): the demand the quota held
    /// back. CFS adds up the time each CPU's run queue of the group was throttled, and each
    /// had a task ready to run then, so with the usage it bounds what the group wanted.
    #[serde(default)]
    pub throttled_cores: Option<f64>,
    /// PSI `some avg10` / `full avg10` of the resource, where present.
    pub psi_some_avg10: Option<f64>,
    pub psi_full_avg10: Option<f64>,
    /// OOM kills / OOM events during the interval, or the group is under OOM now (memory).
    pub oom_events: u64,
    /// Times the limit was hit during the interval (v1 `memory.failcnt`, v2 `memory.events`
    /// `max`).
    pub limit_hits: u64,
}

/// A reason to step a limit up.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "signal", rename_all = "snake_case")]
pub enum Signal {
    NearLimit {
        usage: f64,
        limit: f64,
    },
    Throttled {
        ratio: f64,
        periods: u64,
        /// The demand the quota held back (cores), where the throttled time is known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        held_back: Option<f64>,
    },
    PsiSome {
        avg10: f64,
    },
    PsiFull {
        avg10: f64,
    },
    Oom {
        events: u64,
    },
    LimitHit {
        count: u64,
    },
}

impl Signal {
    /// Urgent signals may step up through a cooldown.
    pub fn urgent(&self) -> bool {
        matches!(self, Signal::Oom { .. } | Signal::PsiFull { .. })
    }

    /// The limit itself was too small (CPU throttled, a memory limit hit, an OOM), as
    /// against a warning (usage near the limit, pressure).
    pub fn shortage(&self) -> bool {
        matches!(
            self,
            Signal::Throttled { .. } | Signal::Oom { .. } | Signal::LimitHit { .. }
        )
    }
}

impl Signals {
    /// The reactive signals present, given the current limit (None: unlimited).
    pub fn active(&self, rule: &ReactiveRule, limit: Option<f64>) -> Vec<Signal> {
        let mut out = Vec::new();
        if let (Some(usage), Some(limit)) = (self.usage, limit) {
            if limit > 0.0 && usage >= rule.near_limit * limit {
                out.push(Signal::NearLimit { usage, limit });
            }
        }
        if let Some(ratio) = self.throttled_ratio {
            if ratio >= rule.throttle_ratio && self.throttled_periods > 0 {
                out.push(Signal::Throttled {
                    ratio,
                    periods: self.throttled_periods,
                    held_back: self.throttled_cores,
                });
            }
        }
        // CPU pressure counts only when the quota throttled the group during the interval:
        // without throttling the stall comes from contention for the host's CPUs (other
        // groups), which a larger quota does not relieve. (Memory has no throttle counter:
        // `throttled_ratio` is None there and pressure always counts.)
        let pressure_from_limit = self.throttled_ratio.is_none() || self.throttled_periods > 0;
        if let Some(avg10) = self.psi_some_avg10.filter(|_| pressure_from_limit) {
            if avg10 >= rule.psi_some_avg10 {
                out.push(Signal::PsiSome { avg10 });
            }
        }
        if let Some(avg10) = self.psi_full_avg10.filter(|_| pressure_from_limit) {
            if avg10 >= rule.psi_full_avg10 {
                out.push(Signal::PsiFull { avg10 });
            }
        }
        if self.oom_events > 0 {
            out.push(Signal::Oom {
                events: self.oom_events,
            });
        }
        if self.limit_hits > 0 {
            out.push(Signal::LimitHit {
                count: self.limit_hits,
            });
        }
        out
    }
}

/// Per-resource memory between intervals.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ResourceState {
    /// Intervals since the last change (saturating; large at start).
    pub since_change: u32,
    /// Consecutive intervals a confident forecast proposed a shrink.
    pub shrink_streak: u32,
    /// Multiplier of the forecast target from the shortage calibration (1: none).
    pub scale: f64,
    /// Consecutive intervals with usage below `scale_in_below` of the limit and no signal.
    #[serde(default)]
    pub surplus_streak: u32,
    /// The highest usage in the streak's current block of `scale_in_after_intervals`
    /// intervals ...
    #[serde(default)]
    pub surplus_peak: f64,
    /// ... and in the block before it: the scale-in aims at the larger of the two, the peak
    /// of the last N to 2N − 1 intervals (an old spike, such as a process's start, ages out).
    #[serde(default)]
    pub surplus_peak_prev: f64,
    /// The highest limit that was short within the last `shortage_memory_intervals`
    /// intervals (0: none) ...
    #[serde(default)]
    pub short_limit: f64,
    /// ... and the intervals since it was.
    #[serde(default)]
    pub short_age: u32,
}

impl ResourceState {
    /// The peak usage the reactive scale-in aims at (see [`ResourceState::surplus_peak_prev`]).
    pub fn surplus_window_peak(&self) -> f64 {
        self.surplus_peak.max(self.surplus_peak_prev)
    }

    fn end_surplus(&mut self) {
        self.surplus_streak = 0;
        self.surplus_peak = 0.0;
        self.surplus_peak_prev = 0.0;
    }
}

impl Default for ResourceState {
    fn default() -> Self {
        ResourceState {
            since_change: u32::MAX / 2,
            shrink_streak: 0,
            scale: 1.0,
            surplus_streak: 0,
            surplus_peak: 0.0,
            surplus_peak_prev: 0.0,
            short_limit: 0.0,
            short_age: 0,
        }
    }
}

/// Where the target came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    /// Nothing to do: no confident forecast, no signal.
    Hold,
    /// A confident forecast's upper bound plus headroom.
    Forecast,
    /// Reactive step up (the signals); with a forecast when it proposed less.
    Reactive { signals: Vec<Signal> },
    /// Reactive scale-in: usage stayed below `scale_in_below` of the limit for `intervals`
    /// intervals in a row (no signal, no confident forecast); the target puts `peak_usage`,
    /// the highest of the last N to 2N − 1 intervals (N = `scale_in_after_intervals`),
    /// halfway between that band and `near_limit`.
    ScaleIn { intervals: u32, peak_usage: f64 },
    /// Placement: pinned onto CPUs not used by the shadow group.
    Placement,
    /// The verdict of a what-if replica run at a proposed shrink (`allocate/gate.rs`):
    /// audited with `old` = the current limit, `new` = the proposed one, never applied itself.
    Whatif {
        pass: bool,
        reasons: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        report: Option<serde_json::Value>,
    },
}

/// A rail that changed the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rail {
    /// Raised to usage + margin.
    UsageFloor,
    Min,
    Max,
    /// The change was smaller than the hysteresis band.
    Hysteresis,
    /// A shrink not yet proposed for K intervals in a row.
    ShrinkHold,
    /// Cut to the largest step per interval.
    MaxStep,
    /// Within the cooldown after the last change.
    Cooldown,
    /// Pinning would leave no CPU.
    NoFreeCpu,
    /// A forecast shrink held until a what-if replica has run at the proposed limit.
    WhatifPending,
    /// A forecast shrink refused: a what-if replica failed at a proposed limit recently.
    WhatifFailed,
    /// A forecast shrink cut to the lowest limit a what-if replica passed at.
    WhatifValidated,
    /// A shrink cut to one reactive step above a limit that was short recently
    /// (`shortage_memory_intervals`).
    RecentShortage,
}

/// The outcome for one scalar resource.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub resource: Resource,
    /// Current limit (None: unlimited).
    pub old: Option<f64>,
    /// Limit to set (equal to `old` when nothing changes).
    pub new: Option<f64>,
    /// The target before the rails.
    pub target: Option<f64>,
    pub reason: Reason,
    pub rails: Vec<Rail>,
    pub forecast: Option<ForecastInput>,
    pub confidence: Option<Confidence>,
}

impl Decision {
    /// Whether the limit changes.
    pub fn changes(&self) -> bool {
        self.old != self.new
    }

    /// Worth auditing: a change, or a change a rail other than hysteresis held back or cut.
    /// (Differences inside the hysteresis band are the steady state, not news.)
    pub fn noteworthy(&self) -> bool {
        self.changes() || self.rails.iter().any(|r| *r != Rail::Hysteresis)
    }
}

/// Decides one interval for a scalar resource (CPU cores or memory bytes) and updates `state`.
pub fn decide(
    resource: Resource,
    cfg: &PolicyConfig,
    rails: &Rails,
    state: &mut ResourceState,
    current: Option<f64>,
    signals: &Signals,
    forecast: Option<&ForecastInput>,
) -> Decision {
    state.since_change = state.since_change.saturating_add(1);
    let eff = current.unwrap_or(rails.max);
    let confidence = forecast.map(|f| cfg.confidence.assess(f));
    let confident = confidence.is_some_and(|c| c.confident);
    let active = signals.active(&cfg.reactive, current);
    let urgent = active.iter().any(Signal::urgent);
    let mut applied_rails = Vec::new();

    let short = active.iter().any(Signal::shortage);

    // 0. Shortage calibration from the interval just observed.
    if let Some(target) = cfg.shortage_target {
        let step = if short { 1.0 - target } else { -target };
        state.scale = (state.scale * (CALIBRATION_GAIN * step).exp()).clamp(0.5, 2.0);
    }

    // Shortage memory: the highest limit that was short within the last W intervals.
    if rails.shortage_memory_intervals > 0 {
        state.short_age = state.short_age.saturating_add(1);
        if state.short_age > rails.shortage_memory_intervals {
            state.short_limit = 0.0;
        }
        if let (true, Some(c)) = (short, current) {
            if c >= state.short_limit {
                state.short_limit = c;
                state.short_age = 0;
            }
        }
    } else {
        state.short_limit = 0.0;
    }

    // Surplus streak of the reactive scale-in: usage below the band, no signal.
    let scale_in_on = rails.scale_in_below > 0.0 && rails.scale_in_after_intervals > 0;
    let surplus = scale_in_on
        && active.is_empty()
        && current.is_some()
        && signals
            .usage
            .is_some_and(|u| u < rails.scale_in_below * eff);
    if surplus {
        state.surplus_streak = state.surplus_streak.saturating_add(1);
        state.surplus_peak = state.surplus_peak.max(signals.usage.unwrap_or(0.0));
        if state
            .surplus_streak
            .is_multiple_of(rails.scale_in_after_intervals)
        {
            // A block is complete: it becomes the previous one.
            state.surplus_peak_prev = state.surplus_peak;
            state.surplus_peak = 0.0;
        }
    } else {
        state.end_surplus();
    }

    // 1. Target.
    let forecast_target = forecast.filter(|_| confident).map(|f| {
        let bound = |u: f64| u.max(0.0) * (1.0 + cfg.headroom) * state.scale;
        let t = bound(f.upper);
        match f.shrink_upper {
            // A shrink must also cover the intervals it holds the limit for.
            Some(hold) if t < eff => bound(hold).max(t).min(eff),
            _ => t,
        }
    });
    // Reactive steps need a limit to step from. A throttled interval whose throttled time
    // is known asks for at least the demand it showed, used plus held back: after an idle
    // stretch has shrunk the limit, a step of `step_up` at a time would take many intervals
    // to catch a returning load (the max step rail still bounds each one).
    let shown = active.iter().find_map(|s| match s {
        Signal::Throttled {
            held_back: Some(h), ..
        } => signals.usage.map(|u| u + h),
        _ => None,
    });
    let reactive_target = (!active.is_empty() && current.is_some())
        .then(|| (eff * (1.0 + cfg.reactive.step_up)).max(shown.unwrap_or(0.0)));
    // Scale-in: the recent peak halfway between the scale-in band and the near-limit one,
    // so the next interval is in neither.
    let scale_in_target = (scale_in_on && state.surplus_streak >= rails.scale_in_after_intervals)
        .then(|| {
            let aim = 0.5 * (rails.scale_in_below + cfg.reactive.near_limit);
            state.surplus_window_peak() / aim.max(1e-9)
        });
    let (target, reason) = match (forecast_target, reactive_target, scale_in_target) {
        (Some(f), Some(r), _) if r > f => (
            r,
            Reason::Reactive {
                signals: active.clone(),
            },
        ),
        (Some(f), _, _) => (f, Reason::Forecast),
        (None, Some(r), _) => (
            r,
            Reason::Reactive {
                signals: active.clone(),
            },
        ),
        (None, None, Some(s)) if s < eff => (
            s,
            Reason::ScaleIn {
                intervals: state.surplus_streak,
                peak_usage: state.surplus_window_peak(),
            },
        ),
        (None, None, _) => (eff, Reason::Hold),
    };
    let scale_in = matches!(reason, Reason::ScaleIn { .. });
    let mut desired = target;

    // 2. Rails.
    if desired < eff && state.short_limit > 0.0 {
        let floor = state.short_limit * (1.0 + cfg.reactive.step_up);
        if desired < floor {
            desired = floor.min(eff);
            applied_rails.push(Rail::RecentShortage);
        }
    }
    if rails.floor_margin_frac > 0.0 || rails.floor_margin_abs > 0.0 {
        if let Some(usage) = signals.usage {
            let floor = usage * (1.0 + rails.floor_margin_frac) + rails.floor_margin_abs;
            if desired < floor {
                // Never below usage + margin (a limit already below it is raised).
                desired = floor;
                applied_rails.push(Rail::UsageFloor);
            }
        }
    }
    if desired < rails.min {
        desired = rails.min;
        applied_rails.push(Rail::Min);
    }
    if desired > rails.max {
        desired = rails.max;
        applied_rails.push(Rail::Max);
    }
    let forced_by_bounds = current.is_some_and(|c| c < rails.min || c > rails.max);
    if !forced_by_bounds && (desired - eff).abs() < rails.hysteresis * eff && desired != eff {
        desired = eff;
        applied_rails.push(Rail::Hysteresis);
    }
    if desired < eff && !forced_by_bounds && !scale_in {
        // A forecast shrink is made only after K proposals in a row (a reactive scale-in has
        // its own, longer streak of observed surplus behind it).
        state.shrink_streak = state.shrink_streak.saturating_add(1);
        if state.shrink_streak < rails.shrink_hold_intervals.max(1) {
            desired = eff;
            applied_rails.push(Rail::ShrinkHold);
        }
    } else {
        state.shrink_streak = 0;
    }
    let up_cap = eff * (1.0 + rails.max_step_up);
    let down_cap = eff * (1.0 - rails.max_step_down);
    if desired > up_cap && !(current.is_some_and(|c| c < rails.min)) {
        desired = up_cap.min(rails.max);
        applied_rails.push(Rail::MaxStep);
    } else if desired < down_cap && !(current.is_some_and(|c| c > rails.max)) {
        desired = down_cap.max(rails.min);
        applied_rails.push(Rail::MaxStep);
    }
    let in_cooldown = state.since_change <= rails.cooldown_intervals;
    let urgent_up = urgent && desired > eff;
    // A confident forecast's growth passes too: it is the pre-allocation the allocator is for,
    // and a rise over two intervals (a spike the forecast sees coming) needs two in a row.
    // The cooldown still spaces out every shrink and every reactive step.
    let forecast_up = matches!(reason, Reason::Forecast) && desired > eff;
    if desired != eff && in_cooldown && !urgent_up && !forecast_up && !forced_by_bounds {
        desired = eff;
        applied_rails.push(Rail::Cooldown);
    }

    // Unlimited stays unlimited unless a limit below max is set.
    let new = if current.is_none() && desired >= rails.max {
        None
    } else {
        Some(desired)
    };
    if new != current {
        state.since_change = 0;
        state.shrink_streak = 0;
        if !scale_in {
            // The surplus was measured against the old limit; a scale-in keeps its streak
            // (usage still below the band of the lower limit steps down again after the
            // cooldown, one `max_step_down` at a time).
            state.end_surplus();
        }
    }
    Decision {
        resource,
        old: current,
        new,
        target: Some(target),
        reason,
        rails: applied_rails,
        forecast: forecast.copied(),
        confidence,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> PolicyConfig {
        PolicyConfig::default()
    }

    fn rails() -> Rails {
        Rails {
            min: 0.1,
            max: 8.0,
            max_step_up: 1.0,
            max_step_down: 0.25,
            cooldown_intervals: 0,
            hysteresis: 0.05,
            shrink_hold_intervals: 1,
            floor_margin_frac: 0.0,
            floor_margin_abs: 0.0,
            scale_in_below: 0.0,
            scale_in_after_intervals: 0,
            shortage_memory_intervals: 0,
        }
    }

    fn fc(point: f64, lower: f64, upper: f64, coverage: Option<f64>) -> ForecastInput {
        ForecastInput {
            point,
            lower,
            upper,
            level: 0.9,
            coverage,
            horizon_intervals: 1,
            shrink_upper: None,
        }
    }

    fn run(
        rails: &Rails,
        st: &mut ResourceState,
        cur: Option<f64>,
        sig: &Signals,
        f: Option<ForecastInput>,
    ) -> Decision {
        decide(Resource::Cpu, &cfg(), rails, st, cur, sig, f.as_ref())
    }

    #[test]
    fn confidence_needs_narrow_interval_and_nominal_coverage() {
        let rule = ConfidenceRule::default();
        assert!(rule.assess(&fc(2.0, 1.8, 2.4, Some(0.9))).confident);
        let wide = rule.assess(&fc(2.0, 1.0, 3.5, Some(0.9)));
        assert!(!wide.confident);
        assert_eq!(wide.why, Verdict::TooWide);
        let off = rule.assess(&fc(2.0, 1.8, 2.4, Some(0.7)));
        assert_eq!(off.why, Verdict::CoverageOffNominal);
        // Over-coverage is accepted up to the (wider) upper tolerance.
        assert!(rule.assess(&fc(2.0, 1.8, 2.4, Some(1.0))).confident);
        let rule = ConfidenceRule {
            over_coverage_tolerance: 0.05,
            ..rule
        };
        assert!(!rule.assess(&fc(2.0, 1.8, 2.4, Some(1.0))).confident);
        assert!(!rule.assess(&fc(2.0, 1.8, 2.4, None)).confident);
        assert!(!rule.assess(&fc(f64::NAN, 1.8, 2.4, Some(0.9))).confident);
        assert!(!rule.assess(&fc(2.0, 2.4, 1.8, Some(0.9))).confident);
    }

    #[test]
    fn confident_forecast_preallocates_upper_plus_headroom() {
        let mut st = ResourceState::default();
        let d = run(
            &rails(),
            &mut st,
            Some(1.0),
            &Signals::default(),
            Some(fc(1.5, 1.4, 1.6, Some(0.9))),
        );
        assert_eq!(d.reason, Reason::Forecast);
        let want = 1.6 * 1.15;
        assert!((d.new.unwrap() - want).abs() < 1e-9, "{d:?}");
        assert!(d.changes());
        assert_eq!(st.since_change, 0);
    }

    #[test]
    fn a_forecast_shrink_covers_the_intervals_it_commits_to_and_growth_only_the_lead() {
        let with_hold = |upper: f64, hold: f64| ForecastInput {
            shrink_upper: Some(hold),
            ..fc(upper, upper * 0.95, upper, Some(0.9))
        };
        let decide_fresh = |current: f64, upper: f64, hold: f64| {
            let mut st = ResourceState::default();
            run(
                &rails(),
                &mut st,
                Some(current),
                &Signals::default(),
                Some(with_hold(upper, hold)),
            )
        };
        // A shrink from 2.0: the next interval needs 1.0, a spike two intervals later 1.5;
        // the shrink stops at the spike's bound plus headroom.
        let d = decide_fresh(2.0, 1.0, 1.5);
        assert_eq!(d.reason, Reason::Forecast);
        assert!((d.new.unwrap() - 1.5 * 1.15).abs() < 1e-9, "{d:?}");
        // The same forecast without the spike shrinks further (the max step rail: -25%).
        let d = decide_fresh(2.0, 1.0, 1.0);
        assert_eq!(d.new, Some(1.5), "{d:?}");
        // Never a growth from the hold bound: above the lead's bound the limit is kept ...
        let d = decide_fresh(1.2, 1.0, 1.5);
        assert_eq!(d.new, Some(1.2), "{d:?}");
        // ... and below it the lead's bound alone decides the growth.
        let d = decide_fresh(1.0, 1.2, 3.0);
        assert!((d.new.unwrap() - 1.2 * 1.15).abs() < 1e-9, "{d:?}");
    }

    #[test]
    fn unconfident_forecast_falls_back_to_reactive() {
        let mut st = ResourceState::default();
        let sig = Signals {
            throttled_ratio: Some(0.5),
            throttled_periods: 40,
            ..Signals::default()
        };
        let d = run(
            &rails(),
            &mut st,
            Some(1.0),
            &sig,
            Some(fc(0.5, 0.0, 3.0, Some(0.9))),
        );
        assert!(matches!(d.reason, Reason::Reactive { .. }), "{d:?}");
        assert_eq!(d.new, Some(1.25));
        // No signal and no confident forecast: hold.
        let d = run(
            &rails(),
            &mut st,
            Some(1.0),
            &Signals::default(),
            Some(fc(0.5, 0.0, 3.0, Some(0.9))),
        );
        assert_eq!(d.reason, Reason::Hold);
        assert!(!d.changes());
    }

    #[test]
    fn no_shrink_back_into_a_limit_that_was_short_recently() {
        let throttled = Signals {
            usage: Some(0.6),
            throttled_ratio: Some(0.5),
            throttled_periods: 40,
            ..Signals::default()
        };
        let calm = Signals {
            usage: Some(0.3),
            ..Signals::default()
        };
        // A confident forecast of 0.4 cores (target 0.4 × 1.15 = 0.46).
        let small = || Some(fc(0.38, 0.36, 0.4, Some(0.9)));
        for (w, held) in [(0, 0), (4, 4)] {
            let r = Rails {
                shortage_memory_intervals: w,
                max_step_down: 0.9,
                ..rails()
            };
            let mut st = ResourceState::default();
            // Throttled at 1.0 core: stepped up to 1.25.
            let d = run(&r, &mut st, Some(1.0), &throttled, None);
            assert_eq!(d.new, Some(1.25), "{d:?}");
            // Then a confident forecast far below: with the memory on, no shrink below one
            // step above the limit that throttled (1.0 × 1.25) for W intervals.
            let mut cur = 1.25;
            for i in 1..=held {
                let d = run(&r, &mut st, Some(cur), &calm, small());
                assert!(!d.changes(), "interval {i} of {w}: {d:?}");
                assert!(d.rails.contains(&Rail::RecentShortage), "{d:?}");
            }
            let d = run(&r, &mut st, Some(cur), &calm, small());
            assert_eq!(d.reason, Reason::Forecast, "{d:?}");
            assert!(!d.rails.contains(&Rail::RecentShortage), "{d:?}");
            assert!((d.new.unwrap() - 0.46).abs() < 1e-9, "W = {w}: {d:?}");
            cur = d.new.unwrap();
            // A shortage at 0.46 (below the remembered 1.0, if any remains): remembered too,
            // so a shrink from the stepped-up limit stops at 0.46 × 1.25.
            let d = run(&r, &mut st, Some(cur), &throttled, None);
            assert!((d.new.unwrap() - 0.575).abs() < 1e-9, "{d:?}");
            let d = run(&r, &mut st, Some(0.7), &calm, small());
            if w == 0 {
                assert!((d.new.unwrap() - 0.46).abs() < 1e-9, "{d:?}");
            } else {
                assert!((d.new.unwrap() - 0.575).abs() < 1e-9, "{d:?}");
                assert!(d.rails.contains(&Rail::RecentShortage), "{d:?}");
            }
        }
    }

    #[test]
    fn every_reactive_signal_steps_up() {
        let r = ReactiveRule::default();
        let cases = [
            Signals {
                usage: Some(0.95),
                ..Signals::default()
            },
            Signals {
                throttled_ratio: Some(0.2),
                throttled_periods: 3,
                ..Signals::default()
            },
            Signals {
                psi_some_avg10: Some(30.0),
                ..Signals::default()
            },
            Signals {
                psi_full_avg10: Some(6.0),
                ..Signals::default()
            },
            Signals {
                oom_events: 1,
                ..Signals::default()
            },
            Signals {
                limit_hits: 2,
                ..Signals::default()
            },
        ];
        for sig in cases {
            assert_eq!(sig.active(&r, Some(1.0)).len(), 1, "{sig:?}");
            let mut st = ResourceState::default();
            let d = run(&rails(), &mut st, Some(1.0), &sig, None);
            assert_eq!(d.new, Some(1.25), "{sig:?}");
        }
        // Below every threshold: nothing.
        let calm = Signals {
            usage: Some(0.5),
            throttled_ratio: Some(0.01),
            throttled_periods: 1,
            psi_some_avg10: Some(1.0),
            psi_full_avg10: Some(0.0),
            ..Signals::default()
        };
        assert!(calm.active(&r, Some(1.0)).is_empty());
        // Reactive never steps an unlimited group.
        let mut st = ResourceState::default();
        let d = run(&rails(), &mut st, None, &cases[1], None);
        assert_eq!(d.new, None);
    }

    #[test]
    fn cpu_pressure_without_throttling_is_contention_not_the_quota() {
        let r = ReactiveRule::default();
        let contended = Signals {
            usage: Some(0.3),
            throttled_ratio: Some(0.0),
            throttled_periods: 0,
            psi_some_avg10: Some(80.0),
            psi_full_avg10: Some(80.0),
            ..Signals::default()
        };
        assert!(contended.active(&r, Some(1.0)).is_empty());
        let throttled = Signals {
            throttled_ratio: Some(0.02),
            throttled_periods: 1,
            ..contended
        };
        let a = throttled.active(&r, Some(1.0));
        assert!(
            a.iter().any(|s| matches!(s, Signal::PsiFull { .. })),
            "{a:?}"
        );
        // Memory (no throttle counter): pressure counts.
        let mem = Signals {
            psi_full_avg10: Some(10.0),
            ..Signals::default()
        };
        assert_eq!(mem.active(&r, Some(1.0)).len(), 1);
    }

    #[test]
    fn shortage_calibration_scales_the_forecast_target() {
        let cfg = PolicyConfig {
            shortage_target: Some(0.1),
            ..cfg()
        };
        let f = fc(1.0, 0.9, 1.0, Some(0.9));
        let short = Signals {
            throttled_ratio: Some(1.0),
            throttled_periods: 10,
            ..Signals::default()
        };
        let mut st = ResourceState::default();
        // Short intervals raise the scale; calm ones lower it, ten times more slowly.
        decide(
            Resource::Cpu,
            &cfg,
            &rails(),
            &mut st,
            Some(2.0),
            &short,
            Some(&f),
        );
        let up = st.scale;
        assert!((up - (0.05f64 * 0.9).exp()).abs() < 1e-12, "{up}");
        for _ in 0..9 {
            decide(
                Resource::Cpu,
                &cfg,
                &rails(),
                &mut st,
                Some(2.0),
                &Signals::default(),
                Some(&f),
            );
        }
        assert!((st.scale - 1.0).abs() < 1e-9, "{}", st.scale);
        // The target carries the scale; bounded to [0.5, 2].
        st.scale = 1.5;
        let d = decide(
            Resource::Cpu,
            &cfg,
            &rails(),
            &mut st,
            Some(1.0),
            &Signals::default(),
            Some(&f),
        );
        let want = 1.0 * 1.15 * 1.5 * (-0.05f64 * 0.1).exp();
        assert!((d.target.unwrap() - want).abs() < 1e-9, "{d:?}");
        for _ in 0..10_000 {
            decide(
                Resource::Cpu,
                &cfg,
                &rails(),
                &mut st,
                Some(1.0),
                &Signals::default(),
                None,
            );
        }
        assert_eq!(st.scale, 0.5);
        // Off by default: the scale stays 1.
        let mut st = ResourceState::default();
        run(&rails(), &mut st, Some(2.0), &short, Some(f));
        assert_eq!(st.scale, 1.0);
    }

    #[test]
    fn rail_min_and_max() {
        let mut st = ResourceState::default();
        let d = run(
            &rails(),
            &mut st,
            Some(0.12),
            &Signals::default(),
            Some(fc(0.01, 0.009, 0.011, Some(0.9))),
        );
        assert_eq!(d.new, Some(0.1));
        assert!(d.rails.contains(&Rail::Min));
        let mut st = ResourceState::default();
        let d = run(
            &rails(),
            &mut st,
            Some(7.0),
            &Signals::default(),
            Some(fc(10.0, 9.5, 10.5, Some(0.9))),
        );
        assert_eq!(d.new, Some(8.0));
        assert!(d.rails.contains(&Rail::Max));
    }

    #[test]
    fn rail_max_step_per_interval() {
        let mut st = ResourceState::default();
        let d = run(
            &rails(),
            &mut st,
            Some(1.0),
            &Signals::default(),
            Some(fc(5.0, 4.8, 5.2, Some(0.9))),
        );
        assert_eq!(d.new, Some(2.0)); // +100% at most
        assert!(d.rails.contains(&Rail::MaxStep));
        let mut st = ResourceState::default();
        let d = run(
            &rails(),
            &mut st,
            Some(4.0),
            &Signals::default(),
            Some(fc(0.5, 0.45, 0.55, Some(0.9))),
        );
        assert_eq!(d.new, Some(3.0)); // −25% at most
        assert!(d.rails.contains(&Rail::MaxStep));
    }

    #[test]
    fn rail_cooldown_blocks_all_but_urgent_steps_up_and_forecast_growth() {
        let r = Rails {
            cooldown_intervals: 2,
            ..rails()
        };
        let mut st = ResourceState::default();
        let thr = Signals {
            throttled_ratio: Some(0.5),
            throttled_periods: 10,
            ..Signals::default()
        };
        assert_eq!(run(&r, &mut st, Some(1.0), &thr, None).new, Some(1.25));
        let d = run(&r, &mut st, Some(1.25), &thr, None);
        assert_eq!(d.new, Some(1.25));
        assert!(d.rails.contains(&Rail::Cooldown));
        let d = run(&r, &mut st, Some(1.25), &thr, None);
        assert!(d.rails.contains(&Rail::Cooldown));
        // Cooldown over after 2 intervals.
        let d = run(&r, &mut st, Some(1.25), &thr, None);
        assert!(d.changes(), "{d:?}");
        // OOM passes through the cooldown.
        let oom = Signals {
            oom_events: 1,
            ..Signals::default()
        };
        let d = run(&r, &mut st, d.new, &oom, None);
        assert!(d.changes() && d.rails.is_empty(), "{d:?}");
        // So does a confident forecast's growth, and not its shrink.
        let now = d.new;
        let d = run(
            &r,
            &mut st,
            now,
            &Signals::default(),
            Some(fc(3.0, 2.9, 3.0, Some(0.9))),
        );
        assert_eq!(d.reason, Reason::Forecast);
        assert!(d.changes() && d.rails.is_empty(), "{d:?}");
        let d = run(
            &r,
            &mut st,
            d.new,
            &Signals::default(),
            Some(fc(1.0, 0.9, 1.0, Some(0.9))),
        );
        assert!(!d.changes() && d.rails.contains(&Rail::Cooldown), "{d:?}");
    }

    #[test]
    fn rail_hysteresis_ignores_small_changes() {
        let mut st = ResourceState::default();
        let d = run(
            &rails(),
            &mut st,
            Some(2.0),
            &Signals::default(),
            // 1.8 * 1.15 = 2.07: +3.5%, inside the 5% band.
            Some(fc(1.75, 1.7, 1.8, Some(0.9))),
        );
        assert!(!d.changes());
        assert_eq!(d.rails, vec![Rail::Hysteresis]);
    }

    #[test]
    fn rail_shrink_only_after_k_confident_intervals() {
        let r = Rails {
            shrink_hold_intervals: 3,
            max_step_down: 0.9,
            ..rails()
        };
        let low = Some(fc(0.9, 0.85, 0.95, Some(0.9)));
        let mut st = ResourceState::default();
        for i in 0..2 {
            let d = run(&r, &mut st, Some(4.0), &Signals::default(), low);
            assert!(!d.changes(), "interval {i}: {d:?}");
            assert!(d.rails.contains(&Rail::ShrinkHold));
        }
        // An unconfident interval resets the streak.
        let d = run(
            &r,
            &mut st,
            Some(4.0),
            &Signals::default(),
            Some(fc(0.9, 0.0, 3.0, Some(0.9))),
        );
        assert!(!d.changes());
        assert_eq!(st.shrink_streak, 0);
        for _ in 0..2 {
            assert!(!run(&r, &mut st, Some(4.0), &Signals::default(), low).changes());
        }
        let d = run(&r, &mut st, Some(4.0), &Signals::default(), low);
        assert!(d.changes(), "{d:?}");
        assert!((d.new.unwrap() - 0.95 * 1.15).abs() < 1e-9);
        // Reactive signals never shrink.
        let mut st = ResourceState::default();
        for _ in 0..5 {
            let d = run(&r, &mut st, Some(4.0), &Signals::default(), None);
            assert!(!d.changes());
        }
    }

    #[test]
    fn imposing_a_limit_on_an_unlimited_group_is_a_held_shrink() {
        let r = Rails {
            shrink_hold_intervals: 2,
            max_step_down: 0.9,
            ..rails()
        };
        let f = Some(fc(2.0, 1.9, 2.1, Some(0.9)));
        let mut st = ResourceState::default();
        assert_eq!(run(&r, &mut st, None, &Signals::default(), f).new, None);
        let d = run(&r, &mut st, None, &Signals::default(), f);
        assert!((d.new.unwrap() - 2.1 * 1.15).abs() < 1e-9, "{d:?}");
    }

    #[test]
    fn rail_memory_never_below_usage_plus_margin() {
        let gib = 1024.0 * 1024.0 * 1024.0;
        let r = Rails {
            shrink_hold_intervals: 1,
            max_step_down: 0.9,
            cooldown_intervals: 0,
            ..Rails::memory(16.0 * gib)
        };
        let sig = Signals {
            usage: Some(2.0 * gib),
            ..Signals::default()
        };
        // The forecast says 1 GiB, but 2 GiB is in use: floor = 2.2 GiB + 32 MiB.
        let f = Some(fc(1.0 * gib, 0.95 * gib, 1.0 * gib, Some(0.9)));
        let mut st = ResourceState::default();
        let d = decide(
            Resource::Memory,
            &cfg(),
            &r,
            &mut st,
            Some(4.0 * gib),
            &sig,
            f.as_ref(),
        );
        let floor = 2.0 * gib * 1.1 + 32.0 * 1024.0 * 1024.0;
        assert_eq!(d.new, Some(floor), "{d:?}");
        assert!(d.rails.contains(&Rail::UsageFloor));
        // A limit already below the floor is raised to it (by at most the max step).
        let mut st = ResourceState::default();
        let d = decide(
            Resource::Memory,
            &cfg(),
            &r,
            &mut st,
            Some(2.1 * gib),
            &sig,
            None,
        );
        assert!(d.new.unwrap() >= floor.min(2.1 * gib * 1.5), "{d:?}");
        assert!(d.new.unwrap() > 2.1 * gib);
    }

    #[test]
    fn reactive_wins_over_a_lower_forecast() {
        let mut st = ResourceState::default();
        let sig = Signals {
            oom_events: 1,
            ..Signals::default()
        };
        let d = run(
            &rails(),
            &mut st,
            Some(2.0),
            &sig,
            Some(fc(1.0, 0.95, 1.05, Some(0.9))),
        );
        assert_eq!(d.new, Some(2.5));
        assert!(matches!(d.reason, Reason::Reactive { .. }));
    }

    #[test]
    fn a_throttled_step_asks_for_at_least_the_demand_it_held_back() {
        // An idle stretch shrank the quota to 0.134 core; the load is back: 0.139 core used,
        // 138 ms of every 200 ms throttled (0.69 core held back).
        let r = Rails {
            max_step_up: 1.0,
            ..rails()
        };
        let back = Signals {
            usage: Some(0.139),
            throttled_ratio: Some(0.9),
            throttled_periods: 18,
            throttled_cores: Some(0.69),
            ..Signals::default()
        };
        let d = run(&r, &mut ResourceState::default(), Some(0.134), &back, None);
        // 0.829 core asked for, +100% at most: 0.268 (one `step_up` would be 0.1675).
        assert!((d.new.unwrap() - 0.268).abs() < 1e-9, "{d:?}");
        assert!(d.rails.contains(&Rail::MaxStep), "{d:?}");
        match &d.reason {
            Reason::Reactive { signals } => assert!(signals.iter().any(|s| matches!(
                s,
                Signal::Throttled { held_back: Some(h), .. } if (*h - 0.69).abs() < 1e-12
            ))),
            other => panic!("{other:?}"),
        }
        // Within the step rail it is taken whole.
        let wide = Rails {
            max_step_up: 10.0,
            ..rails()
        };
        let d = run(
            &wide,
            &mut ResourceState::default(),
            Some(0.134),
            &back,
            None,
        );
        assert!((d.new.unwrap() - 0.829).abs() < 1e-9, "{d:?}");
        // Little held back: the usual step.
        let light = Signals {
            throttled_cores: Some(0.001),
            ..back
        };
        let d = run(
            &wide,
            &mut ResourceState::default(),
            Some(0.134),
            &light,
            None,
        );
        assert!((d.new.unwrap() - 0.1675).abs() < 1e-9, "{d:?}");
    }

    #[test]
    fn out_of_bounds_limits_are_brought_back() {
        let mut st = ResourceState {
            since_change: 0,
            ..ResourceState::default()
        };
        let d = run(&rails(), &mut st, Some(20.0), &Signals::default(), None);
        assert_eq!(d.new, Some(8.0));
    }

    fn used(u: f64) -> Signals {
        Signals {
            usage: Some(u),
            ..Signals::default()
        }
    }

    fn scale_in_rails() -> Rails {
        Rails {
            scale_in_below: 0.5,
            scale_in_after_intervals: 3,
            ..rails()
        }
    }

    #[test]
    fn reactive_scale_in_after_a_streak_of_surplus_steps_down_to_the_peak() {
        let r = scale_in_rails();
        let mut st = ResourceState::default();
        let mut cur = Some(4.0);
        // Two intervals below half the limit: not yet.
        for i in 0..2 {
            let d = run(
                &r,
                &mut st,
                cur,
                &used(if i == 0 { 1.0 } else { 1.2 }),
                None,
            );
            assert!(!d.changes(), "{i}: {d:?}");
            assert_eq!(d.reason, Reason::Hold);
        }
        // The third: towards 1.2 / 0.7 (the peak halfway between 0.5 and near_limit 0.9),
        // cut to one max step (-25%).
        let d = run(&r, &mut st, cur, &used(0.8), None);
        assert_eq!(d.new, Some(3.0), "{d:?}");
        assert_eq!(
            d.reason,
            Reason::ScaleIn {
                intervals: 3,
                peak_usage: 1.2
            }
        );
        assert_eq!(d.rails, vec![Rail::MaxStep]);
        cur = d.new;
        // The surplus holds under each lower limit: one step per interval (cooldown 0)
        // until the peak sits at 70%, and never below it.
        let mut seen = vec![];
        for _ in 0..6 {
            let d = run(&r, &mut st, cur, &used(1.0), None);
            cur = d.new;
            seen.push(cur.unwrap());
        }
        let aim = 1.2 / 0.7;
        assert!((seen[0] - 2.25).abs() < 1e-9, "{seen:?}");
        assert!((seen[1] - aim).abs() < 1e-9, "{seen:?}");
        assert!(seen.iter().all(|&l| l >= aim - 1e-9), "{seen:?}");
        // 1.0 / 1.714 = 58%: out of the band, the streak ends there.
        assert_eq!(st.surplus_streak, 0);
    }

    #[test]
    fn a_spike_at_the_start_of_a_streak_ages_out_of_the_scale_in() {
        // A start-up burst (1.9 of a 4.0 limit) then 0.2 for good: the first steps keep room
        // for the burst, but once two blocks of N have passed without it the limit follows
        // 0.2 down into the band between scale-in and near-limit (the first version kept the
        // streak's peak for as long as it lasted: 2.71 for good).
        let r = scale_in_rails();
        let mut st = ResourceState::default();
        let mut cur = Some(4.0);
        let mut seen = vec![];
        for i in 0..30 {
            let u = if i == 0 { 1.9 } else { 0.2 };
            let d = run(&r, &mut st, cur, &used(u), None);
            cur = d.new;
            seen.push(cur.unwrap());
        }
        assert_eq!(seen[2], 3.0, "{seen:?}");
        assert!((seen[3] - 1.9 / 0.7).abs() < 1e-9, "{seen:?}");
        assert!((seen[4] - 1.9 / 0.7).abs() < 1e-9, "{seen:?}");
        // Usage at 50-70% of the final limit: neither band, so it stays there.
        let last = *seen.last().unwrap();
        assert!((0.2 / 0.7 - 1e-9..=0.4).contains(&last), "{seen:?}");
        assert_eq!(seen[25..], [last; 5], "{seen:?}");
    }

    #[test]
    fn scale_in_streak_is_broken_by_usage_in_the_band_or_any_signal() {
        let r = scale_in_rails();
        let mut st = ResourceState::default();
        run(&r, &mut st, Some(4.0), &used(1.0), None);
        run(&r, &mut st, Some(4.0), &used(1.0), None);
        // At half the limit: no longer a surplus.
        run(&r, &mut st, Some(4.0), &used(2.0), None);
        assert_eq!(st.surplus_streak, 0);
        run(&r, &mut st, Some(4.0), &used(1.0), None);
        run(&r, &mut st, Some(4.0), &used(1.0), None);
        // Throttled while using little (bursts inside the interval): a signal, a step up.
        let sig = Signals {
            usage: Some(1.0),
            throttled_ratio: Some(0.3),
            throttled_periods: 30,
            ..Signals::default()
        };
        let d = run(&r, &mut st, Some(4.0), &sig, None);
        assert!(matches!(d.reason, Reason::Reactive { .. }), "{d:?}");
        assert_eq!(st.surplus_streak, 0);
        // Unknown usage never counts.
        for _ in 0..5 {
            let d = run(&r, &mut st, Some(5.0), &Signals::default(), None);
            assert!(!d.changes());
        }
    }

    #[test]
    fn a_confident_forecast_overrides_the_scale_in() {
        // Low usage now, but the forecast sees demand coming: the limit is kept for it.
        let r = scale_in_rails();
        let mut st = ResourceState::default();
        for _ in 0..6 {
            let d = run(
                &r,
                &mut st,
                Some(4.0),
                &used(1.0),
                Some(fc(3.0, 2.8, 3.45, Some(0.9))),
            );
            assert!(!d.changes(), "{d:?}");
            assert_eq!(d.reason, Reason::Forecast);
        }
        // Without the forecast the same streak scales in.
        let d = run(&r, &mut st, Some(4.0), &used(1.0), None);
        assert_eq!(d.new, Some(3.0));
    }

    #[test]
    fn scale_in_is_off_by_default_and_keeps_the_memory_floor() {
        let mut st = ResourceState::default();
        let cpu = Rails::cpu(8.0);
        for _ in 0..100 {
            let d = run(&cpu, &mut st, Some(4.0), &used(0.1), None);
            assert!(!d.changes());
        }
        let gib = 1024.0 * 1024.0 * 1024.0;
        let mem = Rails {
            scale_in_below: 0.5,
            scale_in_after_intervals: 2,
            max_step_down: 0.9,
            cooldown_intervals: 0,
            ..Rails::memory(16.0 * gib)
        };
        let mut st = ResourceState::default();
        let mut cur = Some(8.0 * gib);
        for _ in 0..20 {
            let d = decide(
                Resource::Memory,
                &cfg(),
                &mem,
                &mut st,
                cur,
                &used(gib),
                None,
            );
            cur = d.new;
        }
        // 1 GiB / 0.7, above the floor of 1 GiB + 10% + 32 MiB.
        let l = cur.unwrap();
        assert!((l - gib / 0.7).abs() < 1.0, "{l}");
    }

    #[test]
    fn rails_validation_names_the_key() {
        assert!(Rails::cpu(2.0).validate().is_ok());
        let bad = Rails {
            max: 0.01,
            ..Rails::cpu(2.0)
        };
        assert_eq!(bad.validate().unwrap_err().0, "max");
        let bad = Rails {
            scale_in_below: 1.0,
            ..Rails::cpu(2.0)
        };
        assert_eq!(bad.validate().unwrap_err().0, "scale_in_below");
    }
}
