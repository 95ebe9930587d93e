//! The individual models. Each is a [`Forecaster`] whose fit returns its own fitted type.
//!
//! Intervals of the baselines are empirical: the quantiles of the same-lag differences the
//! model's own forecast errors would have been over the training window (no Gaussian
//! assumption). AutoETS and MSTL use augurs' intervals. None of these is recalibrated; only the
//! default policy ([`super::policy`]) is.

use augurs_core::{Fit, Predict};
use augurs_ets::{trend::AutoETSTrendModel, AutoETS};
use augurs_mstl::MSTLModel;

use super::{
    check_history, check_request, quantile_sorted, season::SeasonDetector, sort_floats, Fitted,
    Forecast, ForecastError, Forecaster, Interval,
};

/// Empirical interval offsets: for each level, the (1-level)/2 and (1+level)/2 quantiles of
/// `errors` (which it sorts).
fn empirical(errors: &mut [f64], level: f64) -> (f64, f64) {
    sort_floats(errors);
    let a = (1.0 - level) / 2.0;
    (quantile_sorted(errors, a), quantile_sorted(errors, 1.0 - a))
}

fn intervals_from(
    point: &[f64],
    levels: &[f64],
    mut errors_for_step: impl FnMut(usize) -> Vec<f64>,
) -> Vec<Interval> {
    let mut out: Vec<Interval> = levels
        .iter()
        .map(|&level| Interval {
            level,
            lower: Vec::with_capacity(point.len()),
            upper: Vec::with_capacity(point.len()),
        })
        .collect();
    for (h, &p) in point.iter().enumerate() {
        let mut errs = errors_for_step(h + 1);
        for iv in &mut out {
            let (lo, hi) = if errs.is_empty() {
                (0.0, 0.0)
            } else {
                empirical(&mut errs, iv.level)
            };
            iv.lower.push(p + lo);
            iv.upper.push(p + hi);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------

/// Repeats the last observation.
#[derive(Debug, Clone, Copy, Default)]
pub struct LastValue;

/// A fitted [`LastValue`].
#[derive(Debug, Clone)]
pub struct FittedLastValue {
    history: Vec<f64>,
}

impl Forecaster for LastValue {
    type Fitted = FittedLastValue;
    fn name(&self) -> &'static str {
        "last_value"
    }
    fn fit(&self, y: &[f64]) -> Result<FittedLastValue, ForecastError> {
        check_history("last_value", y, 2)?;
        Ok(FittedLastValue {
            history: y.to_vec(),
        })
    }
}

impl Fitted for FittedLastValue {
    fn predict(&self, horizon: usize, levels: &[f64]) -> Result<Forecast, ForecastError> {
        check_request(horizon, levels)?;
        let y = &self.history;
        let last = y[y.len() - 1];
        let point = vec![last; horizon];
        let intervals = intervals_from(&point, levels, |h| {
            y.windows(h + 1).map(|w| w[h] - w[0]).collect()
        });
        Ok(Forecast { point, intervals })
    }
}

// ---------------------------------------------------------------------------------------------

/// Repeats the last full season. The period is given or detected at fit time
/// ([`SeasonDetector`]); with none found it degrades to the last value (period 1).
#[derive(Debug, Clone, Copy, Default)]
pub struct SeasonalNaive {
    pub period: Option<usize>,
}

/// A fitted [`SeasonalNaive`].
#[derive(Debug, Clone)]
pub struct FittedSeasonalNaive {
    history: Vec<f64>,
    period: usize,
}

impl FittedSeasonalNaive {
    /// The period used (1 when no season was found).
    pub fn period(&self) -> usize {
        self.period
    }
}

impl Forecaster for SeasonalNaive {
    type Fitted = FittedSeasonalNaive;
    fn name(&self) -> &'static str {
        "seasonal_naive"
    }
    fn fit(&self, y: &[f64]) -> Result<FittedSeasonalNaive, ForecastError> {
        check_history("seasonal_naive", y, 2)?;
        let period = match self.period {
            Some(p) => {
                check_history("seasonal_naive", y, p.max(1) + 1)?;
                p.max(1)
            }
            None => SeasonDetector::default().detect(y).unwrap_or(1),
        };
        Ok(FittedSeasonalNaive {
            history: y.to_vec(),
            period,
        })
    }
}

impl Fitted for FittedSeasonalNaive {
    fn predict(&self, horizon: usize, levels: &[f64]) -> Result<Forecast, ForecastError> {
        check_request(horizon, levels)?;
        let (y, p, n) = (&self.history, self.period, self.history.len());
        let point: Vec<f64> = (0..horizon).map(|h| y[n - p + (h % p)]).collect();
        let intervals = intervals_from(&point, levels, |h| {
            let lag = h.div_ceil(p) * p;
            if lag >= n {
                return Vec::new();
            }
            y.windows(lag + 1).map(|w| w[lag] - w[0]).collect()
        });
        Ok(Forecast { point, intervals })
    }
}

// ---------------------------------------------------------------------------------------------

/// The Kubernetes VPA recommender's estimator, as a forecaster: samples go into an exponential
/// histogram (each bucket 5% wider than the previous) with weights that halve every
/// `half_life` samples; the point forecast is the weighted median and the interval at level
/// `l` spans the weighted `(1-l)/2` and `(1+l)/2` percentiles, flat over the horizon.
/// (VPA's own target is the 90th percentile; for a point forecast scored by absolute error the
/// median is the right statistic.)
#[derive(Debug, Clone, Copy)]
pub struct DecayingPercentile {
    /// Samples until a weight halves (VPA: 24 h).
    pub half_life: f64,
}

/// A fitted [`DecayingPercentile`]: the decayed histogram.
#[derive(Debug, Clone)]
pub struct FittedDecayingPercentile {
    /// (bucket representative value, weight), ascending by value.
    buckets: Vec<(f64, f64)>,
    total: f64,
}

const BUCKET_GROWTH: f64 = 1.05;
/// First bucket width relative to the largest magnitude in the window.
const FIRST_BUCKET: f64 = 1e-3;

impl Forecaster for DecayingPercentile {
    type Fitted = FittedDecayingPercentile;
    fn name(&self) -> &'static str {
        "vpa_histogram"
    }
    fn fit(&self, y: &[f64]) -> Result<FittedDecayingPercentile, ForecastError> {
        check_history("vpa_histogram", y, 1)?;
        let scale = y.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let first = (scale * FIRST_BUCKET).max(f64::MIN_POSITIVE);
        let g = BUCKET_GROWTH - 1.0;
        // Bucket i starts at first * (1.05^i - 1) / 0.05; negative values share bucket 0.
        let index = |v: f64| -> usize {
            if v <= 0.0 {
                0
            } else {
                ((1.0 + g * v / first).ln() / BUCKET_GROWTH.ln()).floor() as usize
            }
        };
        let start = |i: usize| first * (BUCKET_GROWTH.powi(i as i32) - 1.0) / g;
        let n = y.len();
        let half_life = self.half_life.max(1e-9);
        let mut weights: std::collections::BTreeMap<usize, f64> = Default::default();
        let mut min_v = f64::INFINITY;
        for (i, &v) in y.iter().enumerate() {
            let age = (n - 1 - i) as f64;
            *weights.entry(index(v)).or_default() += (-age / half_life).exp2();
            min_v = min_v.min(v);
        }
        let buckets: Vec<(f64, f64)> = weights
            .into_iter()
            .map(|(i, w)| {
                let mid = if i == 0 && min_v <= 0.0 {
                    min_v.max(-first).min(0.0)
                } else {
                    0.5 * (start(i) + start(i + 1))
                };
                (mid, w)
            })
            .collect();
        let total = buckets.iter().map(|b| b.1).sum();
        Ok(FittedDecayingPercentile { buckets, total })
    }
}

impl FittedDecayingPercentile {
    /// The weighted `q`-percentile (0..=1).
    pub fn percentile(&self, q: f64) -> f64 {
        let target = q.clamp(0.0, 1.0) * self.total;
        let mut acc = 0.0;
        for &(v, w) in &self.buckets {
            acc += w;
            if acc >= target {
                return v;
            }
        }
        self.buckets.last().map_or(f64::NAN, |b| b.0)
    }
}

impl Fitted for FittedDecayingPercentile {
    fn predict(&self, horizon: usize, levels: &[f64]) -> Result<Forecast, ForecastError> {
        check_request(horizon, levels)?;
        let point = vec![self.percentile(0.5); horizon];
        let intervals = levels
            .iter()
            .map(|&level| {
                let a = (1.0 - level) / 2.0;
                Interval {
                    level,
                    lower: vec![self.percentile(a); horizon],
                    upper: vec![self.percentile(1.0 - a); horizon],
                }
            })
            .collect();
        Ok(Forecast { point, intervals })
    }
}

// ---------------------------------------------------------------------------------------------

fn augurs_forecast<P: Predict>(
    model: &'static str,
    fitted: &P,
    horizon: usize,
    levels: &[f64],
) -> Result<Forecast, ForecastError>
where
    P::Error: Send + Sync,
{
    check_request(horizon, levels)?;
    let wrap = |e: P::Error| ForecastError::Model {
        model,
        op: "predict",
        source: Box::new(e),
    };
    if levels.is_empty() {
        let f = fitted.predict(horizon, None).map_err(wrap)?;
        return Ok(Forecast {
            point: f.point,
            intervals: Vec::new(),
        });
    }
    let mut point = Vec::new();
    let mut intervals = Vec::with_capacity(levels.len());
    for &level in levels {
        let f = fitted.predict(horizon, level).map_err(wrap)?;
        let iv = f.intervals.ok_or(ForecastError::Model {
            model,
            op: "predict intervals",
            source: "the model returned no intervals".into(),
        })?;
        point = f.point;
        intervals.push(Interval {
            level,
            lower: iv.lower,
            upper: iv.upper,
        });
    }
    Ok(Forecast { point, intervals })
}

/// augurs' AutoETS (non-seasonal: augurs implements no seasonal ETS), model chosen by AICc.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ets;

/// A fitted [`Ets`].
#[derive(Debug)]
pub struct FittedEts(augurs_ets::FittedAutoETS);

impl Forecaster for Ets {
    type Fitted = FittedEts;
    fn name(&self) -> &'static str {
        "auto_ets"
    }
    fn fit(&self, y: &[f64]) -> Result<FittedEts, ForecastError> {
        check_history("auto_ets", y, 4)?;
        AutoETS::non_seasonal()
            .fit(y)
            .map(FittedEts)
            .map_err(|e| ForecastError::Model {
                model: "auto_ets",
                op: "fit",
                source: Box::new(e),
            })
    }
}

impl Fitted for FittedEts {
    fn predict(&self, horizon: usize, levels: &[f64]) -> Result<Forecast, ForecastError> {
        augurs_forecast("auto_ets", &self.0, horizon, levels)
    }
}

/// augurs' MSTL with an AutoETS trend. The season is detected per fit ([`SeasonDetector`]);
/// without one the model is AutoETS alone.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mstl;

/// A fitted [`Mstl`].
#[derive(Debug)]
pub enum FittedMstl {
    Seasonal {
        period: usize,
        model: augurs_mstl::FittedMSTLModel,
    },
    NoSeason(FittedEts),
}

impl Forecaster for Mstl {
    type Fitted = FittedMstl;
    fn name(&self) -> &'static str {
        "mstl_ets"
    }
    fn fit(&self, y: &[f64]) -> Result<FittedMstl, ForecastError> {
        check_history("mstl_ets", y, 4)?;
        let Some(period) = SeasonDetector::default().detect(y) else {
            return Ets.fit(y).map(FittedMstl::NoSeason);
        };
        let trend = AutoETSTrendModel::from(AutoETS::non_seasonal());
        MSTLModel::new(vec![period], trend)
            .fit(y)
            .map(|model| FittedMstl::Seasonal { period, model })
            .map_err(|e| ForecastError::Model {
                model: "mstl_ets",
                op: "fit",
                source: Box::new(e),
            })
    }
}

impl Fitted for FittedMstl {
    fn predict(&self, horizon: usize, levels: &[f64]) -> Result<Forecast, ForecastError> {
        match self {
            FittedMstl::Seasonal { model, .. } => {
                augurs_forecast("mstl_ets", model, horizon, levels)
            }
            FittedMstl::NoSeason(ets) => ets.predict(horizon, levels),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(n: usize, p: usize) -> Vec<f64> {
        (0..n)
            .map(|i| 50.0 + 20.0 * (i as f64 * std::f64::consts::TAU / p as f64).sin())
            .collect()
    }

    #[test]
    fn last_value_repeats_and_brackets() {
        let y = [3.0, 5.0, 3.0, 5.0, 3.0, 5.0, 3.0, 5.0, 3.0];
        let f = LastValue.fit(&y).unwrap().predict(2, &[0.8]).unwrap();
        assert_eq!(f.point, vec![3.0; 2]);
        let iv = f.interval(0.8).unwrap();
        // One step ahead the series has moved by ±2; two steps ahead it is back.
        assert_eq!((iv.lower[0], iv.upper[0]), (1.0, 5.0));
        assert_eq!((iv.lower[1], iv.upper[1]), (3.0, 3.0));
        assert!(matches!(
            LastValue.fit(&[1.0]),
            Err(ForecastError::TooShort { needed: 2, .. })
        ));
    }

    #[test]
    fn seasonal_naive_repeats_the_detected_season() {
        let y = sine(240, 24);
        let fitted = SeasonalNaive::default().fit(&y).unwrap();
        assert_eq!(fitted.period(), 24);
        let f = fitted.predict(30, &[0.95]).unwrap();
        for (h, p) in f.point.iter().enumerate() {
            let truth = 50.0 + 20.0 * ((240 + h) as f64 * std::f64::consts::TAU / 24.0).sin();
            assert!((p - truth).abs() < 1e-9, "h {h}: {p} vs {truth}");
        }
        let given = SeasonalNaive { period: Some(3) }.fit(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(
            given.unwrap().predict(4, &[]).unwrap().point,
            vec![2.0, 3.0, 4.0, 2.0]
        );
    }

    #[test]
    fn vpa_median_follows_recent_data() {
        // Old regime at 10, recent regime at 100: with a short half-life the median is recent.
        let mut y = vec![10.0; 200];
        y.extend(vec![100.0; 50]);
        let f = DecayingPercentile { half_life: 10.0 }.fit(&y).unwrap();
        let m = f.percentile(0.5);
        assert!((m - 100.0).abs() < 100.0 * 0.06, "median {m}");
        // With a very long half-life the old regime dominates.
        let slow = DecayingPercentile { half_life: 1e9 }.fit(&y).unwrap();
        assert!((slow.percentile(0.5) - 10.0).abs() < 10.0 * 0.06);
        let fc = f.predict(2, &[0.8]).unwrap();
        let iv = fc.interval(0.8).unwrap();
        assert!(iv.lower[0] <= fc.point[0] && fc.point[0] <= iv.upper[0]);
    }

    #[test]
    fn ets_tracks_a_level_and_its_interval_widens() {
        let y: Vec<f64> = (0..200)
            .map(|i| 20.0 + crate::forecast::test_noise(i))
            .collect();
        let f = Ets.fit(&y).unwrap().predict(5, &[0.8, 0.95]).unwrap();
        assert!((f.point[0] - 20.0).abs() < 0.5, "{:?}", f.point);
        let (i80, i95) = (f.interval(0.8).unwrap(), f.interval(0.95).unwrap());
        assert!(i95.upper[0] - i95.lower[0] > i80.upper[0] - i80.lower[0]);
    }

    #[test]
    fn mstl_forecasts_a_season() {
        let y = sine(96, 12);
        let f = Mstl.fit(&y).unwrap().predict(12, &[0.95]).unwrap();
        for (h, p) in f.point.iter().enumerate() {
            let truth = 50.0 + 20.0 * ((96 + h) as f64 * std::f64::consts::TAU / 12.0).sin();
            assert!((p - truth).abs() < 2.0, "h {h}: {p} vs {truth}");
        }
    }
}
