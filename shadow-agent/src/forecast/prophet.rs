//! Prophet (cargo feature `prophet`, off by default): augurs-prophet with its `wasmstan`
//! backend, i.e. Prophet's own Stan model compiled to a WebAssembly component and optimised
//! (L-BFGS, MLE) inside wasmtime. The component is embedded in the binary, so neither a Stan
//! installation nor a C++ toolchain is needed, at build time or at run time; the price is
//! wasmtime in the build (minutes of compile time; the release binary grew from 13.3 to
//! 45.5 MB) and tens of milliseconds per fit.
//!
//! The forecaster only sees an evenly spaced `&[f64]`, so the model is given synthetic
//! timestamps `0, step_s, 2·step_s, …` ([`Prophet::step_s`], default 300 s: the traces'
//! 5-minute samples). Only the spacing matters to Prophet (seasonalities are in seconds);
//! the absolute epoch only shifts the daily phase, which Prophet fits anyway.
//!
//! **Seasonality.** Daily seasonality (Prophet's default 4 Fourier terms) is on when the
//! history spans at least one day, and off otherwise: Prophet's own "auto" rule wants two
//! days of span, which a 576-sample window of 5-minute data misses by one step, and a
//! shorter window cannot identify a daily shape. Weekly and yearly seasonality keep
//! Prophet's automatic rule (two weeks / two years of history, never met by the windows used
//! here). Growth is linear with Prophet's default 25 changepoints over the first 80%.
//!
//! **Intervals.** Prophet's interval width is a single level per prediction, but it does not
//! affect the fit ([`augurs_prophet::Prophet::set_interval_width`]): the model is fitted once
//! and predicted once per requested level, each prediction simulating `uncertainty_samples`
//! (default 1000) future paths (trend changepoints resampled, Gaussian observation noise) and
//! taking their quantiles. The cost of a level is therefore one simulation, not one fit
//! (a few ms against the fit's tens of ms). The draws of two levels are independent, so
//! Monte-Carlo noise could in principle make two close levels cross; each wider interval is
//! widened to contain the narrower ones (a no-op with 1000 draws at 80 and 95%). As in
//! augurs (MLE, no MCMC), the seasonal coefficients' uncertainty is not modelled.
//!
//! **Constant histories.** On a constant history (an idle VM at exactly 0% for the whole
//! window) Prophet has nothing to fit: the noise scale's estimate is zero, and an all-zero
//! history even makes the Stan component trap. Such a fit skips Stan and forecasts the
//! constant with zero-width intervals, the model's limit (and what every baseline gives).
//!
//! **Clipping.** When the history is non-negative (resource usage), the point forecast and
//! the bounds are clipped at zero, as the default policy does: Prophet's linear trend plus
//! Fourier terms can extrapolate below zero on an idle series.

use std::sync::OnceLock;

use augurs_prophet::{
    optimizer::OptimizeOpts, wasmstan::WasmstanOptimizer, IntervalWidth, PredictionData,
    ProphetOptions, SeasonalityOption, TrainingData,
};

use super::{check_history, check_request, Fitted, Forecast, ForecastError, Forecaster, Interval};

const NAME: &str = "prophet";

/// The compiled WebAssembly component, shared by every model in the process: compiling it
/// (Cranelift, ~3 MB of WASM) takes far longer than a fit, so it is done once.
fn optimizer() -> &'static WasmstanOptimizer {
    static OPTIMIZER: OnceLock<WasmstanOptimizer> = OnceLock::new();
    OPTIMIZER.get_or_init(WasmstanOptimizer::new)
}

/// Prophet on an evenly spaced series (see the module documentation).
#[derive(Debug, Clone, Copy)]
pub struct Prophet {
    /// Seconds between consecutive samples, used for the synthetic timestamps (default 300).
    pub step_s: f64,
    /// Simulated paths per interval level (Prophet's `uncertainty_samples`, default 1000).
    pub uncertainty_samples: u32,
}

impl Default for Prophet {
    fn default() -> Self {
        Prophet {
            step_s: 300.0,
            uncertainty_samples: 1000,
        }
    }
}

impl Prophet {
    /// Fewest observations a fit accepts.
    pub const MIN_HISTORY: usize = 4;

    /// A model for samples `step_s` seconds apart.
    pub fn with_step(step_s: f64) -> Prophet {
        Prophet {
            step_s,
            ..Prophet::default()
        }
    }

    /// Compiles the shared WebAssembly component now, so that the first fit does not pay for
    /// it (a backtest calls this before timing fits).
    pub fn warm_up() {
        optimizer();
    }

    fn step(&self) -> i64 {
        (self.step_s.round() as i64).max(1)
    }
}

/// A fitted [`Prophet`].
#[derive(Debug)]
pub struct FittedProphet {
    /// `None` for a constant history ([`FittedProphet::constant`]).
    model: Option<augurs_prophet::Prophet<WasmstanOptimizer>>,
    /// The last observation (the whole history when there is no model).
    last: f64,
    /// Timestamp of the last observation.
    last_ds: i64,
    step: i64,
    clip_at_zero: bool,
    daily: bool,
}

impl FittedProphet {
    /// Whether daily seasonality was fitted (the history spans at least one day).
    pub fn daily_seasonality(&self) -> bool {
        self.daily
    }

    /// Whether the history was constant, so Stan was not run (see the module documentation).
    pub fn constant(&self) -> bool {
        self.model.is_none()
    }
}

fn model_error(op: &'static str, e: augurs_prophet::Error) -> ForecastError {
    ForecastError::Model {
        model: NAME,
        op,
        source: Box::new(e),
    }
}

impl Forecaster for Prophet {
    type Fitted = FittedProphet;
    fn name(&self) -> &'static str {
        NAME
    }
    fn fit(&self, y: &[f64]) -> Result<FittedProphet, ForecastError> {
        check_history(NAME, y, Prophet::MIN_HISTORY)?;
        let step = self.step();
        let ds: Vec<i64> = (0..y.len() as i64).map(|i| i * step).collect();
        let span = (y.len() as i64 - 1) * step;
        let daily = span >= 86_400;
        let last = y[y.len() - 1];
        let clip_at_zero = y.iter().all(|&v| v >= 0.0);
        if y.iter().all(|&v| v == last) {
            return Ok(FittedProphet {
                model: None,
                last,
                last_ds: span,
                step,
                clip_at_zero,
                daily,
            });
        }
        let opts = ProphetOptions {
            daily_seasonality: SeasonalityOption::Manual(daily),
            uncertainty_samples: self.uncertainty_samples,
            ..ProphetOptions::default()
        };
        let data = TrainingData::new(ds, y.to_vec()).map_err(|e| model_error("fit", e))?;
        let mut model = augurs_prophet::Prophet::new(opts, optimizer().clone());
        let fit_opts = OptimizeOpts {
            // The optimiser starts from Prophet's deterministic initial values; fixing the
            // seed makes the fit itself reproducible.
            seed: Some(1),
            ..OptimizeOpts::default()
        };
        model
            .fit(data, fit_opts)
            .map_err(|e| model_error("fit", e))?;
        Ok(FittedProphet {
            model: Some(model),
            last,
            last_ds: span,
            step,
            clip_at_zero,
            daily,
        })
    }
}

impl Fitted for FittedProphet {
    fn predict(&self, horizon: usize, levels: &[f64]) -> Result<Forecast, ForecastError> {
        check_request(horizon, levels)?;
        let clip = |v: f64| if self.clip_at_zero { v.max(0.0) } else { v };
        let Some(model) = &self.model else {
            return Ok(Forecast::flat(self.last, horizon, levels));
        };
        let future = PredictionData::new(
            (1..=horizon as i64)
                .map(|h| self.last_ds + h * self.step)
                .collect(),
        );
        let mut model = model.clone();
        if levels.is_empty() {
            model.opts_mut().uncertainty_samples = 0;
            let p = model
                .predict(future)
                .map_err(|e| model_error("predict", e))?;
            return Ok(Forecast {
                point: p.yhat.point.into_iter().map(clip).collect(),
                intervals: Vec::new(),
            });
        }

        // Narrowest level first, so each wider interval can be made to contain the previous.
        let mut order: Vec<usize> = (0..levels.len()).collect();
        order.sort_by(|&a, &b| levels[a].total_cmp(&levels[b]));
        let mut point = Vec::new();
        let mut intervals: Vec<Option<Interval>> = vec![None; levels.len()];
        let mut inner: Option<(Vec<f64>, Vec<f64>)> = None;
        for i in order {
            let level = levels[i];
            let width = IntervalWidth::try_new(level).map_err(|e| model_error("predict", e))?;
            model.set_interval_width(width);
            let p = model
                .predict(future.clone())
                .map_err(|e| model_error("predict", e))?;
            let (Some(mut lower), Some(mut upper)) = (p.yhat.lower, p.yhat.upper) else {
                return Err(ForecastError::Model {
                    model: NAME,
                    op: "predict intervals",
                    source: "the model returned no intervals".into(),
                });
            };
            if let Some((lo_in, hi_in)) = &inner {
                for (l, &li) in lower.iter_mut().zip(lo_in) {
                    *l = l.min(li);
                }
                for (u, &ui) in upper.iter_mut().zip(hi_in) {
                    *u = u.max(ui);
                }
            }
            inner = Some((lower.clone(), upper.clone()));
            point = p.yhat.point;
            intervals[i] = Some(Interval {
                level,
                lower: lower.into_iter().map(clip).collect(),
                upper: upper.into_iter().map(clip).collect(),
            });
        }
        Ok(Forecast {
            point: point.into_iter().map(clip).collect(),
            intervals: intervals.into_iter().flatten().collect(),
        })
    }
}

#[cfg(all(test, feature = "prophet"))]
mod tests {
    use super::*;

    /// 5-minute samples: a daily cycle (288 samples) on a level of 50, plus noise.
    fn daily(n: usize) -> Vec<f64> {
        (0..n)
            .map(|i| truth(i) + 2.0 * super::super::test_noise(i))
            .collect()
    }

    fn truth(i: usize) -> f64 {
        50.0 + 20.0 * (i as f64 * std::f64::consts::TAU / 288.0).sin()
    }

    #[test]
    fn forecasts_a_daily_season_with_nested_intervals() {
        let n = 3 * 288;
        let y = daily(n);
        let fitted = Prophet::default().fit(&y).unwrap();
        assert!(fitted.daily_seasonality());
        let horizon = 36;
        let f = fitted.predict(horizon, &[0.95, 0.8]).unwrap();
        assert_eq!(f.point.len(), horizon);
        // The requested order is kept.
        assert_eq!(f.intervals.len(), 2);
        assert_eq!((f.intervals[0].level, f.intervals[1].level), (0.95, 0.8));
        let mut abs_err = 0.0;
        for (h, p) in f.point.iter().enumerate() {
            let t = truth(n + h);
            assert!((p - t).abs() < 4.0, "h {h}: {p} vs {t}");
            abs_err += (p - t).abs();
        }
        assert!(abs_err / (horizon as f64) < 1.5, "MAE {}", abs_err / 36.0);
        // A last value would be off by up to 20 here: the season is really being used.
        let (i80, i95) = (f.interval(0.8).unwrap(), f.interval(0.95).unwrap());
        for h in 0..horizon {
            assert!(
                i95.lower[h] <= i80.lower[h] && i80.upper[h] <= i95.upper[h],
                "h {h}"
            );
            assert!(
                i80.lower[h] <= f.point[h] && f.point[h] <= i80.upper[h],
                "h {h}"
            );
            // The noise is uniform on ±1: the 80% band is a few units wide, not hundreds.
            let w = i80.upper[h] - i80.lower[h];
            assert!(w > 0.5 && w < 15.0, "h {h}: 80% width {w}");
        }
        assert!(i95.upper[0] - i95.lower[0] > i80.upper[0] - i80.lower[0]);
        // Without levels: the same point forecast, no intervals.
        let bare = fitted.predict(horizon, &[]).unwrap();
        assert!(bare.intervals.is_empty());
        for (a, b) in bare.point.iter().zip(&f.point) {
            assert!((a - b).abs() < 1e-9);
        }
    }

    #[test]
    fn short_windows_have_no_daily_season_and_clip_at_zero() {
        // Half a day of a series falling towards zero: no daily term, and the extrapolated
        // trend would cross zero, so the clipped forecast stays at or above it.
        let y: Vec<f64> = (0..144).map(|i| (143 - i) as f64 * 0.05).collect();
        let fitted = Prophet::default().fit(&y).unwrap();
        assert!(!fitted.daily_seasonality());
        let f = fitted.predict(48, &[0.8]).unwrap();
        assert!(f.point.iter().all(|&p| p >= 0.0), "{:?}", f.point);
        assert_eq!(*f.point.last().unwrap(), 0.0, "{:?}", f.point);
        let iv = f.interval(0.8).unwrap();
        assert!(iv.lower.iter().all(|&l| l >= 0.0));
        // A series with negative values is not clipped.
        let neg: Vec<f64> = y.iter().map(|v| v - 5.0).collect();
        let f = Prophet::default()
            .fit(&neg)
            .unwrap()
            .predict(48, &[])
            .unwrap();
        assert!(*f.point.last().unwrap() < -5.0, "{:?}", f.point);
    }

    #[test]
    fn constant_histories_forecast_the_constant() {
        // An all-zero window (an idle VM) makes the Stan component trap: it is not fitted.
        for c in [0.0, 3.5] {
            let fitted = Prophet::default().fit(&vec![c; 576]).unwrap();
            assert!(fitted.constant());
            let f = fitted.predict(12, &[0.8, 0.95]).unwrap();
            assert_eq!(f.point, vec![c; 12]);
            for iv in &f.intervals {
                assert_eq!((&iv.lower, &iv.upper), (&f.point, &f.point));
            }
        }
        // One different value is enough for a real fit.
        let mut y = vec![0.0; 576];
        y[300] = 1.0;
        assert!(!Prophet::default().fit(&y).unwrap().constant());
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(matches!(
            Prophet::default().fit(&[1.0, 2.0, 3.0]),
            Err(ForecastError::TooShort {
                model: "prophet",
                needed: 4,
                got: 3
            })
        ));
        let mut y = daily(300);
        y[17] = f64::NAN;
        assert!(matches!(
            Prophet::default().fit(&y),
            Err(ForecastError::NonFinite {
                model: "prophet",
                index: 17,
                ..
            })
        ));
        y[17] = f64::INFINITY;
        assert!(matches!(
            Prophet::default().fit(&y),
            Err(ForecastError::NonFinite { index: 17, .. })
        ));
        let fitted = Prophet::default().fit(&daily(300)).unwrap();
        assert!(matches!(
            fitted.predict(0, &[0.8]),
            Err(ForecastError::ZeroHorizon)
        ));
        assert!(matches!(
            fitted.predict(3, &[95.0]),
            Err(ForecastError::InvalidLevel { .. })
        ));
    }
}
