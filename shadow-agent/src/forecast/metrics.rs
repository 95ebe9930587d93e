//! Forecast accuracy and calibration metrics.
//!
//! - **MASE** of a series: the mean absolute error of all its forecasts (every origin, steps
//!   1..=H) divided by the mean, over the same origins, of the in-sample mean absolute error of
//!   the seasonal naive forecast with season `m` on each training window,
//!   `mean |y[t] − y[t − m]|` ([`mase_scale_seasonal`]). This is Nixtla's per-series
//!   `utilsforecast.losses.mase(seasonality=m)` over a cross-validation frame (errors pooled
//!   per series, one scale per series), the definition issue 7's reference numbers name;
//!   `m = 1` is the one-step naive scale of Hyndman & Koehler. The backtest defaults to
//!   `m` = one day (288 at 5 minutes) when the window is longer than a day, else 1. A ratio of
//!   means, not a mean of per-origin ratios: a quiet window with a tiny scale cannot dominate
//!   the series' score (the per-origin mean is kept as `mase_per_origin`). Origins whose
//!   window is constant add their error and a zero scale (counted as `unscaled`); a series
//!   whose every window is constant has no MASE. An aggregate is the mean over series.
//! - **sMAPE**: `200·|y − ŷ| / (|y| + |ŷ|)` per point (0 when both are 0), in percent.
//! - **Coverage** at level `l`: the fraction of forecast points inside their `l` interval.
//! - **Width**: mean `upper − lower` of the 95% interval, in the metric's unit.

use super::Forecast;

/// Mean absolute one-step change of `train`; `None` if it is zero (or `train` too short).
pub fn mase_scale(train: &[f64]) -> Option<f64> {
    if train.len() < 2 {
        return None;
    }
    let s = train.windows(2).map(|w| (w[1] - w[0]).abs()).sum::<f64>() / (train.len() - 1) as f64;
    (s > 0.0 && s.is_finite()).then_some(s)
}

/// Mean absolute `m`-step seasonal difference of `train` (the in-sample error of the seasonal
/// naive forecast with season `m`); `m = 1` is [`mase_scale`]. `None` if it is zero, `m` is
/// zero, or `train` has no more than `m` points.
pub fn mase_scale_seasonal(train: &[f64], m: usize) -> Option<f64> {
    if m == 0 || train.len() <= m {
        return None;
    }
    let n = train.len() - m;
    let s = (m..train.len())
        .map(|t| (train[t] - train[t - m]).abs())
        .sum::<f64>()
        / n as f64;
    (s > 0.0 && s.is_finite()).then_some(s)
}

/// Symmetric absolute percentage error of one point, in percent (0..=200).
pub fn smape_point(actual: f64, forecast: f64) -> f64 {
    let d = actual.abs() + forecast.abs();
    if d == 0.0 {
        0.0
    } else {
        200.0 * (actual - forecast).abs() / d
    }
}

/// Running sums for one model on one series.
#[derive(Debug, Clone, Default)]
pub struct Accumulator {
    /// Sum over origins of the per-origin ratio MAE / scale (origins with a scale).
    pub mase_sum: f64,
    pub mase_n: usize,
    /// Sum over origins of the horizon-averaged MAE and of the scale.
    pub mae_sum: f64,
    pub scale_sum: f64,
    pub origins: usize,
    pub unscaled: usize,
    pub smape_sum: f64,
    pub points: usize,
    /// Points inside the interval, per level (same order as the levels given to `add`).
    pub covered: Vec<usize>,
    pub width95_sum: f64,
    pub width95_n: usize,
    pub fit_ns: u128,
    /// Thread CPU time of the fits and forecasts.
    pub fit_cpu_ns: u128,
    pub fits: usize,
    pub failures: usize,
    /// Season of the MASE scale (1: one-step naive).
    pub mase_season: usize,
}

impl Accumulator {
    /// An accumulator with the one-step MASE scale.
    pub fn new(levels: usize) -> Self {
        Self::with_mase_season(levels, 1)
    }

    /// An accumulator whose MASE is scaled by the seasonal naive error with season `m`.
    pub fn with_mase_season(levels: usize, m: usize) -> Self {
        Self {
            covered: vec![0; levels],
            mase_season: m.max(1),
            ..Self::default()
        }
    }

    /// Scores one forecast of `actual` made from `train`.
    pub fn add(&mut self, train: &[f64], actual: &[f64], f: &Forecast, levels: &[f64]) {
        let h = actual.len().min(f.point.len());
        let mae = (0..h).map(|i| (actual[i] - f.point[i]).abs()).sum::<f64>() / h.max(1) as f64;
        self.mae_sum += mae;
        self.origins += 1;
        match mase_scale_seasonal(train, self.mase_season.max(1)) {
            Some(s) => {
                self.mase_sum += mae / s;
                self.mase_n += 1;
                self.scale_sum += s;
            }
            None => self.unscaled += 1,
        }
        for (a, p) in actual.iter().zip(&f.point).take(h) {
            self.smape_sum += smape_point(*a, *p);
        }
        self.points += h;
        for (li, &level) in levels.iter().enumerate() {
            if let Some(iv) = f.interval(level) {
                self.covered[li] += (0..h)
                    .filter(|&i| iv.lower[i] <= actual[i] && actual[i] <= iv.upper[i])
                    .count();
            }
            if (level - 0.95).abs() < 1e-9 {
                if let Some(iv) = f.interval(level) {
                    self.width95_sum += (0..h).map(|i| iv.upper[i] - iv.lower[i]).sum::<f64>();
                    self.width95_n += h;
                }
            }
        }
    }

    /// The series' MASE: mean MAE over mean scale (see the module documentation).
    pub fn mase(&self) -> f64 {
        if self.scale_sum > 0.0 {
            self.mae_sum / self.scale_sum
        } else {
            f64::NAN
        }
    }
    /// The mean over origins of each origin's MAE / scale (the definition before issue 7's).
    pub fn mase_per_origin(&self) -> f64 {
        ratio(self.mase_sum, self.mase_n)
    }
    pub fn smape(&self) -> f64 {
        ratio(self.smape_sum, self.points)
    }
    pub fn coverage(&self, level_index: usize) -> f64 {
        ratio(self.covered[level_index] as f64, self.points)
    }
    pub fn width95(&self) -> f64 {
        ratio(self.width95_sum, self.width95_n)
    }
    pub fn ms_per_fit(&self) -> f64 {
        ratio(self.fit_ns as f64 / 1e6, self.fits)
    }
}

fn ratio(sum: f64, n: usize) -> f64 {
    if n == 0 {
        f64::NAN
    } else {
        sum / n as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::Interval;

    #[test]
    fn mase_scale_is_the_naive_error() {
        assert_eq!(mase_scale(&[1.0, 3.0, 2.0]), Some(1.5));
        assert_eq!(mase_scale(&[4.0, 4.0, 4.0]), None);
        assert_eq!(mase_scale(&[4.0]), None);
        assert_eq!(mase_scale_seasonal(&[1.0, 3.0, 2.0], 1), Some(1.5));
        // Season 2: |2 - 1| and |5 - 3|.
        assert_eq!(mase_scale_seasonal(&[1.0, 3.0, 2.0, 5.0], 2), Some(1.5));
        assert_eq!(mase_scale_seasonal(&[1.0, 3.0], 2), None);
        assert_eq!(mase_scale_seasonal(&[1.0, 3.0, 1.0, 3.0], 2), None);
    }

    #[test]
    fn smape_bounds() {
        assert_eq!(smape_point(0.0, 0.0), 0.0);
        assert_eq!(smape_point(100.0, 100.0), 0.0);
        assert_eq!(smape_point(0.0, 5.0), 200.0);
        assert!((smape_point(100.0, 50.0) - 200.0 * 50.0 / 150.0).abs() < 1e-12);
    }

    #[test]
    fn accumulator_scores_a_forecast() {
        let train = [0.0, 2.0, 0.0, 2.0, 0.0]; // scale 2
        let actual = [1.0, 3.0];
        let f = Forecast {
            point: vec![1.0, 1.0], // errors 0 and 2: MAE 1, MASE 0.5
            intervals: vec![
                Interval {
                    level: 0.8,
                    lower: vec![0.5, 0.5],
                    upper: vec![1.5, 1.5], // covers the first only
                },
                Interval {
                    level: 0.95,
                    lower: vec![0.0, 0.0],
                    upper: vec![4.0, 4.0], // covers both, width 4
                },
            ],
        };
        let mut acc = Accumulator::new(2);
        acc.add(&train, &actual, &f, &[0.8, 0.95]);
        assert_eq!(acc.mase(), 0.5);
        assert_eq!(acc.coverage(0), 0.5);
        assert_eq!(acc.coverage(1), 1.0);
        assert_eq!(acc.width95(), 4.0);
        assert!((acc.smape() - (0.0 + 200.0 * 2.0 / 4.0) / 2.0).abs() < 1e-12);
        // A constant window: its error counts, its scale is zero.
        acc.add(&[3.0, 3.0], &actual, &f, &[0.8, 0.95]);
        assert_eq!(acc.unscaled, 1);
        assert_eq!(acc.mase_n, 1);
        assert_eq!(acc.mase_per_origin(), 0.5);
        // Ratio of means: (1 + 1) / (2 + 0).
        assert_eq!(acc.mase(), 1.0);
    }
}
