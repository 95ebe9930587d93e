//! Demand forecasting: models behind typestate traits, the default policy, CSV traces and a
//! rolling-origin backtest.
//!
//! A [`Forecaster`] is an unfitted model specification; [`Forecaster::fit`] consumes a history
//! and returns a [`Fitted`] model, and only a fitted model can [`Fitted::predict`]. A forecast
//! carries point forecasts and one prediction interval per requested level.
//!
//! - [`models`]: last value, seasonal naive, a VPA-style decaying-histogram percentile, AutoETS
//!   and MSTL (both from the `augurs` crates).
//! - `prophet` (cargo feature `prophet`, off by default): Prophet through augurs-prophet's
//!   wasmstan backend.
//! - `arima` (cargo feature `arima`, off by default): non-seasonal AutoARIMA from
//!   anofox-forecast.
//! - [`season`]: seasonality detection (a correlogram).
//! - [`policy`]: the default policy ([`policy::Adaptive`]): per-series, per-horizon selection among
//!   cheap candidates by recent rolling-origin error, with split-conformal intervals from the
//!   series' own recent errors.
//! - [`data`]: the long CSV format and its resampling.
//! - [`metrics`] and [`backtest`]: the evaluation `shadow-agent backtest` runs.

#[cfg(feature = "arima")]
pub mod arima;
pub mod backtest;
pub mod cli;
pub mod cmd;
pub mod data;
pub mod demand;
pub mod live;
pub mod metrics;
pub mod models;
pub mod policy;
#[cfg(feature = "prophet")]
pub mod prophet;
pub mod season;

/// Why a model could not be fitted or could not forecast.
#[derive(Debug, thiserror::Error)]
pub enum ForecastError {
    #[error("{model}: needs at least {needed} observations, got {got}")]
    TooShort {
        model: &'static str,
        needed: usize,
        got: usize,
    },
    #[error("{model}: observation {index} is not finite ({value})")]
    NonFinite {
        model: &'static str,
        index: usize,
        value: f64,
    },
    #[error("interval level {level} is not in (0, 1)")]
    InvalidLevel { level: f64 },
    #[error("horizon must be at least 1")]
    ZeroHorizon,
    #[error("{model}: fitted for horizons up to {fitted}, {requested} requested")]
    HorizonBeyondFit {
        model: &'static str,
        requested: usize,
        fitted: usize,
    },
    #[error("{model}: {op}")]
    Model {
        model: &'static str,
        op: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A prediction interval at one level for every step of the horizon.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Interval {
    /// Nominal coverage in (0, 1), e.g. 0.8.
    pub level: f64,
    pub lower: Vec<f64>,
    pub upper: Vec<f64>,
}

/// Point forecasts for steps 1..=horizon and one interval per requested level (same order).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Forecast {
    pub point: Vec<f64>,
    pub intervals: Vec<Interval>,
}

impl Forecast {
    /// `value` at every step, with zero-width intervals at `levels`: the forecast of a
    /// constant history by a model that has nothing to fit there.
    pub fn flat(value: f64, horizon: usize, levels: &[f64]) -> Forecast {
        let flat = vec![value; horizon];
        Forecast {
            intervals: levels
                .iter()
                .map(|&level| Interval {
                    level,
                    lower: flat.clone(),
                    upper: flat.clone(),
                })
                .collect(),
            point: flat,
        }
    }

    /// The interval at `level`, if it was requested.
    pub fn interval(&self, level: f64) -> Option<&Interval> {
        self.intervals
            .iter()
            .find(|i| (i.level - level).abs() < 1e-9)
    }
}

/// An unfitted model: a specification that can be fitted to a history.
pub trait Forecaster {
    /// The fitted model: the only thing that can forecast.
    type Fitted: Fitted;
    /// Stable, machine-readable name (used in reports).
    fn name(&self) -> &'static str;
    /// Fit to `y` (oldest first, evenly spaced, finite).
    fn fit(&self, y: &[f64]) -> Result<Self::Fitted, ForecastError>;
}

/// A fitted model.
pub trait Fitted {
    /// Forecast `horizon` steps ahead with an interval for each of `levels` (each in (0, 1)).
    fn predict(&self, horizon: usize, levels: &[f64]) -> Result<Forecast, ForecastError>;
}

impl Fitted for Box<dyn Fitted + Send> {
    fn predict(&self, horizon: usize, levels: &[f64]) -> Result<Forecast, ForecastError> {
        (**self).predict(horizon, levels)
    }
}

/// Object-safe form of [`Forecaster`], so heterogeneous models can sit in one list.
pub trait DynForecaster: Send + Sync {
    fn name(&self) -> &'static str;
    fn fit_dyn(&self, y: &[f64]) -> Result<Box<dyn Fitted + Send>, ForecastError>;
}

impl<F> DynForecaster for F
where
    F: Forecaster + Send + Sync,
    F::Fitted: Send + 'static,
{
    fn name(&self) -> &'static str {
        Forecaster::name(self)
    }
    fn fit_dyn(&self, y: &[f64]) -> Result<Box<dyn Fitted + Send>, ForecastError> {
        Ok(Box::new(self.fit(y)?))
    }
}

/// Checks the arguments every `predict` shares.
pub(crate) fn check_request(horizon: usize, levels: &[f64]) -> Result<(), ForecastError> {
    if horizon == 0 {
        return Err(ForecastError::ZeroHorizon);
    }
    for &level in levels {
        if !(level > 0.0 && level < 1.0) {
            return Err(ForecastError::InvalidLevel { level });
        }
    }
    Ok(())
}

/// Checks a training history: at least `needed` points, all finite.
pub(crate) fn check_history(
    model: &'static str,
    y: &[f64],
    needed: usize,
) -> Result<(), ForecastError> {
    if y.len() < needed {
        return Err(ForecastError::TooShort {
            model,
            needed,
            got: y.len(),
        });
    }
    if let Some((index, &value)) = y.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(ForecastError::NonFinite {
            model,
            index,
            value,
        });
    }
    Ok(())
}

/// The `q`-quantile (0..=1) of an ascending slice, linear interpolation between order
/// statistics. `NaN` for an empty slice.
pub(crate) fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    sorted[lo] + (sorted[hi] - sorted[lo]) * frac
}

/// Split-conformal bounds from signed calibration errors (`actual - forecast`), sorted
/// ascending: the offsets to add to the point forecast so that, for exchangeable errors, the
/// interval covers with probability `level`. The bounds sit at the (1-based) fractional ranks
/// `(n+1)·(1-level)/2` and `(n+1)·(1+level)/2`, interpolated between the neighbouring order
/// statistics and clamped to the sample. A new error falls between the i-th and j-th order
/// statistics with probability `(j-i)/(n+1)`, so this is the nominal level on average; the
/// textbook rounding of the ranks outwards guarantees *at least* the level but over-covers
/// by up to `2/(n+1)`: +5 points at n = 40 (a 144-sample window), which is what the issue's
/// "stated coverage is true coverage" rules out.
pub(crate) fn conformal_offsets(sorted_errors: &[f64], level: f64) -> (f64, f64) {
    let n = sorted_errors.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let alpha = 1.0 - level;
    let at = |rank: f64| {
        let pos = rank.clamp(1.0, n as f64) - 1.0;
        let (i, f) = (pos.floor() as usize, pos.fract());
        let j = (i + 1).min(n - 1);
        sorted_errors[i] + (sorted_errors[j] - sorted_errors[i]) * f
    };
    let m = (n + 1) as f64;
    (at(m * alpha / 2.0), at(m * (1.0 - alpha / 2.0)))
}

/// CPU time of the calling thread, in nanoseconds (0 if the clock cannot be read).
pub fn thread_cpu_ns() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

pub(crate) fn sort_floats(v: &mut [f64]) {
    v.sort_by(|a, b| a.total_cmp(b));
}

/// Deterministic pseudo-noise in [-0.5, 0.5) for tests (a hashed index, no RNG state).
#[cfg(test)]
pub(crate) fn test_noise(i: usize) -> f64 {
    let mut x = (i as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    (x >> 11) as f64 / (1u64 << 53) as f64 - 0.5
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(quantile_sorted(&v, 0.0), 1.0);
        assert_eq!(quantile_sorted(&v, 0.5), 3.0);
        assert_eq!(quantile_sorted(&v, 1.0), 5.0);
        assert!((quantile_sorted(&v, 0.125) - 1.5).abs() < 1e-12);
        assert!(quantile_sorted(&[], 0.5).is_nan());
    }

    #[test]
    fn conformal_offsets_interpolate_the_finite_sample_ranks() {
        let errs: Vec<f64> = (1..=99).map(|i| i as f64).collect();
        // n = 99, level 0.8: ranks 100 * 0.1 = 10 and 100 * 0.9 = 90 (exact).
        let (lo, hi) = conformal_offsets(&errs, 0.8);
        assert!(
            (lo - 10.0).abs() < 1e-9 && (hi - 90.0).abs() < 1e-9,
            "{lo} {hi}"
        );
        // n = 39, level 0.8: ranks 4 and 36, exact; n = 40: 4.1 and 36.9, between them.
        let errs: Vec<f64> = (1..=40).map(|i| 10.0 * i as f64).collect();
        let (lo, hi) = conformal_offsets(&errs[..39], 0.8);
        assert!(
            (lo - 40.0).abs() < 1e-9 && (hi - 360.0).abs() < 1e-9,
            "{lo} {hi}"
        );
        let (lo, hi) = conformal_offsets(&errs, 0.8);
        assert!(
            (lo - 41.0).abs() < 1e-9 && (hi - 369.0).abs() < 1e-9,
            "{lo} {hi}"
        );
        // Too few errors for the level: the extremes.
        assert_eq!(conformal_offsets(&[1.0, 2.0], 0.95), (1.0, 2.0));
    }

    #[test]
    fn requests_are_checked() {
        assert!(matches!(
            check_request(0, &[0.8]),
            Err(ForecastError::ZeroHorizon)
        ));
        assert!(matches!(
            check_request(3, &[80.0]),
            Err(ForecastError::InvalidLevel { .. })
        ));
        assert!(matches!(
            check_history("m", &[1.0, f64::NAN], 1),
            Err(ForecastError::NonFinite { index: 1, .. })
        ));
    }
}
