//! Shadow-derived demand: what the primary will need, from what the shadow costs per unit of
//! load and a forecast of the primary's load.
//!
//! The shadow replica serves a known fraction of the primary's traffic (the mirror's clones).
//! Its CPU per step against the clones per step gives the cost of one unit of load
//! ([`CostModel`]: a Theil-Sen line, robust to the shadow's own spikes, with Sen's
//! distribution-free interval for the slope). The primary's demand at step `h` is then
//! `intercept + slope · load̂(h)`, where `load̂` is the default policy's forecast of the
//! primary's load signal (packets the mirror matched on the primary's interface).
//!
//! [`choose`] compares this derived forecast with the direct forecast of the primary's own
//! series on the same recent targets, without refitting: the load policy's recent
//! out-of-sample errors give the load forecast that was made for each recent target
//! (`load − error`), hence the derived forecast and its error; the direct policy's errors are
//! its own. The lower mean absolute error over the last `compare` targets of every step wins,
//! and the reason says by how much. The derived intervals are calibrated on the derived
//! errors exactly as the policy's own ([`super::policy`]). The cost line is fitted on the
//! whole window including those targets (two parameters; stated, not hidden).

use super::{
    policy::{aci_offsets, Adaptive, FittedAdaptive},
    Forecast, ForecastError, Interval,
};

/// The shadow's cost per unit of load: `cost = intercept + slope · load`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct CostModel {
    pub intercept: f64,
    pub slope: f64,
    /// Sen's 95% interval for the slope.
    pub slope_lo: f64,
    pub slope_hi: f64,
    /// Samples the line was fitted on.
    pub samples: usize,
}

/// Most recent samples the cost line is fitted on (the pairwise slopes grow with its square).
pub const MAX_COST_SAMPLES: usize = 200;

/// Theil-Sen fit of `y` against `x` over the last [`MAX_COST_SAMPLES`] pairs where both are
/// finite. `None` with fewer than 8 such pairs or when `x` never changes (no slope to learn).
pub fn theil_sen(x: &[f64], y: &[f64]) -> Option<CostModel> {
    let pts: Vec<(f64, f64)> = x
        .iter()
        .zip(y)
        .filter(|(a, b)| a.is_finite() && b.is_finite())
        .map(|(&a, &b)| (a, b))
        .collect();
    let pts = &pts[pts.len().saturating_sub(MAX_COST_SAMPLES)..];
    let n = pts.len();
    if n < 8 {
        return None;
    }
    let mut slopes = Vec::with_capacity(n * (n - 1) / 2);
    for i in 0..n {
        for j in i + 1..n {
            let dx = pts[j].0 - pts[i].0;
            if dx != 0.0 {
                slopes.push((pts[j].1 - pts[i].1) / dx);
            }
        }
    }
    let m = slopes.len();
    if m < n {
        return None;
    }
    let mut nth = |k: usize| -> f64 {
        let k = k.min(m - 1);
        *slopes.select_nth_unstable_by(k, |a, b| a.total_cmp(b)).1
    };
    let slope = if m % 2 == 1 {
        nth(m / 2)
    } else {
        0.5 * (nth(m / 2 - 1) + nth(m / 2))
    };
    // Sen (1968): the slope's 95% interval lies between the order statistics at
    // (m ∓ C) / 2, C = z · sqrt(var of Kendall's S) (ties in x ignored).
    let nf = n as f64;
    let c = 1.959_964 * (nf * (nf - 1.0) * (2.0 * nf + 5.0) / 18.0).sqrt();
    let lo_rank = ((m as f64 - c) / 2.0).floor().max(0.0) as usize;
    let hi_rank = ((m as f64 + c) / 2.0).ceil() as usize;
    let (slope_lo, slope_hi) = (nth(lo_rank), nth(hi_rank));
    let mut resid: Vec<f64> = pts.iter().map(|(a, b)| b - slope * a).collect();
    let k = resid.len() / 2;
    let intercept = *resid.select_nth_unstable_by(k, |a, b| a.total_cmp(b)).1;
    Some(CostModel {
        intercept,
        slope,
        slope_lo,
        slope_hi,
        samples: n,
    })
}

/// Which forecast of the primary's demand is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The default policy on the primary's own series.
    Direct,
    /// The shadow's cost per unit of load times the forecast of the primary's load.
    ShadowDerived,
}

/// The chosen forecast and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Choice {
    pub source: Source,
    pub reason: String,
    pub forecast: Forecast,
    /// Mean absolute error over the compared targets (all steps), of each source.
    pub direct_mae: f64,
    pub derived_mae: f64,
    pub cost: CostModel,
}

/// Recent targets over which the two forecasts are compared (per step).
pub const COMPARE: usize = 72;

/// The derived forecast of `primary` (history, same steps as `load`) from the cost line and
/// the fitted load policy, compared with the fitted direct policy; the better one on the last
/// [`COMPARE`] targets of every step is returned with intervals at `levels`.
#[allow(clippy::too_many_arguments)]
pub fn choose(
    policy: &Adaptive,
    primary: &[f64],
    direct: &FittedAdaptive,
    load: &[f64],
    load_fit: &FittedAdaptive,
    cost: CostModel,
    horizon: usize,
    levels: &[f64],
) -> Result<Choice, ForecastError> {
    use super::Fitted as _;
    let direct_fc = direct.predict(horizon, levels)?;
    let load_fc = load_fit.predict(horizon, &[])?;
    let n = primary.len().min(load.len());
    let (pe, le) = (&primary[primary.len() - n..], &load[load.len() - n..]);
    let clip = |v: f64| v.max(0.0);
    let mut derived_errors: Vec<Vec<f64>> = Vec::with_capacity(horizon);
    let (mut d_sum, mut x_sum, mut count) = (0.0, 0.0, 0usize);
    for h in 1..=horizon {
        let el = load_fit.recent_errors(h);
        let ed = direct.recent_errors(h);
        let k = el.len().min(n);
        // Oldest first: target index n - k + i for error el[el.len() - k + i].
        let errs: Vec<f64> = (0..k)
            .map(|i| {
                let j = n - k + i;
                let load_hat = le[j] - el[el.len() - k + i];
                pe[j] - clip(cost.intercept + cost.slope * load_hat)
            })
            .collect();
        let c = COMPARE.min(errs.len()).min(ed.len());
        d_sum += errs[errs.len() - c..].iter().map(|e| e.abs()).sum::<f64>();
        x_sum += ed[ed.len() - c..].iter().map(|e| e.abs()).sum::<f64>();
        count += c;
        derived_errors.push(errs);
    }
    if count == 0 {
        return Err(ForecastError::TooShort {
            model: "shadow_derived",
            needed: policy.min_history(),
            got: n,
        });
    }
    let (derived_mae, direct_mae) = (d_sum / count as f64, x_sum / count as f64);
    let per = count / horizon.max(1);
    if derived_mae < direct_mae {
        let point: Vec<f64> = load_fc
            .point
            .iter()
            .map(|&l| clip(cost.intercept + cost.slope * l))
            .collect();
        let intervals = levels
            .iter()
            .map(|&level| {
                let (lower, upper) = (0..horizon)
                    .map(|h| {
                        let (lo, hi) = aci_offsets(
                            &derived_errors[h],
                            policy.calibration,
                            policy.aci_replay,
                            policy.aci_gamma,
                            h + 1,
                            level,
                        );
                        (clip(point[h] + lo), clip(point[h] + hi))
                    })
                    .unzip();
                Interval {
                    level,
                    lower,
                    upper,
                }
            })
            .collect();
        Ok(Choice {
            source: Source::ShadowDerived,
            reason: format!(
                "shadow-derived: mean absolute error {derived_mae:.4} vs direct {direct_mae:.4} \
                 over the last {per} targets of steps 1-{horizon}; cost {:.6} per unit of load \
                 (95% {:.6}..{:.6}) + {:.4}",
                cost.slope, cost.slope_lo, cost.slope_hi, cost.intercept
            ),
            forecast: Forecast { point, intervals },
            direct_mae,
            derived_mae,
            cost,
        })
    } else {
        Ok(Choice {
            source: Source::Direct,
            reason: format!(
                "direct: mean absolute error {direct_mae:.4} vs shadow-derived {derived_mae:.4} \
                 over the last {per} targets of steps 1-{horizon}"
            ),
            forecast: direct_fc,
            direct_mae,
            derived_mae,
            cost,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::{test_noise as noise, Forecaster as _};

    #[test]
    fn theil_sen_recovers_the_cost_despite_spikes() {
        // CPU-seconds = 0.05 + 0.002 per packet, small noise, and 10% wild spikes.
        let x: Vec<f64> = (0..300)
            .map(|i| 100.0 + 80.0 * (i as f64 * 0.1).sin())
            .collect();
        let y: Vec<f64> = x
            .iter()
            .enumerate()
            .map(|(i, &l)| {
                let spike = if i % 10 == 3 { 2.0 } else { 0.0 };
                0.05 + 0.002 * l + 0.01 * noise(i) + spike
            })
            .collect();
        let m = theil_sen(&x, &y).unwrap();
        assert_eq!(m.samples, MAX_COST_SAMPLES);
        assert!((m.slope - 0.002).abs() < 0.0002, "{m:?}");
        assert!(m.slope_lo <= 0.002 && 0.002 <= m.slope_hi, "{m:?}");
        assert!(m.slope_hi - m.slope_lo < 0.001, "{m:?}");
        assert!((m.intercept - 0.05).abs() < 0.02, "{m:?}");
        // Least squares would be pulled by the spikes; no slope without varying load.
        assert!(theil_sen(&[5.0; 50], &y[..50]).is_none());
        assert!(theil_sen(&x[..5], &y[..5]).is_none());
    }

    /// A daily-like load (period 48) and a primary whose CPU is its cost plus heavy noise.
    fn world(related: bool) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let n = 576;
        let load: Vec<f64> = (0..n)
            .map(|i| 200.0 + 150.0 * (i as f64 * std::f64::consts::TAU / 48.0).sin() + noise(i))
            .collect();
        // The shadow sees half the flows.
        let shadow_load: Vec<f64> = load.iter().map(|l| 0.5 * l).collect();
        let shadow_cpu: Vec<f64> = shadow_load
            .iter()
            .enumerate()
            .map(|(i, l)| 0.02 + 0.001 * l + 0.01 * noise(i + 7000))
            .collect();
        let primary: Vec<f64> = (0..n)
            .map(|i| {
                if related {
                    0.02 + 0.001 * load[i] + 0.08 * noise(i + 9000)
                } else {
                    0.5 + 0.3 * noise(i + 11000)
                }
            })
            .collect();
        (load, shadow_load, shadow_cpu, primary)
    }

    fn run(related: bool) -> Choice {
        let (load, shadow_load, shadow_cpu, primary) = world(related);
        let policy = Adaptive::default();
        let cost = theil_sen(&shadow_load, &shadow_cpu).unwrap();
        let direct = policy.fit(&primary).unwrap();
        let load_fit = policy.fit(&load).unwrap();
        choose(
            &policy,
            &primary,
            &direct,
            &load,
            &load_fit,
            cost,
            12,
            &[0.8, 0.95],
        )
        .unwrap()
    }

    #[test]
    fn derived_wins_when_the_load_explains_the_demand() {
        let c = run(true);
        assert!((c.cost.slope - 0.001).abs() < 0.0001, "{:?}", c.cost);
        assert_eq!(c.source, Source::ShadowDerived, "{}", c.reason);
        assert!(c.reason.starts_with("shadow-derived"), "{}", c.reason);
        // The truth one step after the history: 0.02 + 0.001 · load(576).
        let truth = 0.02 + 0.001 * (200.0 + 150.0 * (576.0 * std::f64::consts::TAU / 48.0).sin());
        assert!(
            (c.forecast.point[0] - truth).abs() < 0.02,
            "{:?}",
            c.forecast.point
        );
        let i95 = c.forecast.interval(0.95).unwrap();
        assert!(i95.lower[0] <= truth && truth <= i95.upper[0], "{i95:?}");
    }

    #[test]
    fn direct_wins_when_the_load_does_not() {
        let c = run(false);
        assert_eq!(c.source, Source::Direct, "{}", c.reason);
        assert!(c.direct_mae < c.derived_mae);
    }
}
