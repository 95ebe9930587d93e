//! AutoARIMA (cargo feature `arima`, off by default): anofox-forecast's `AutoARIMA`, a port of
//! R's `auto.arima` (KPSS for the differencing order, stepwise search over (p, q) by AICc,
//! exact likelihood) with Gaussian prediction intervals.
//!
//! **Non-seasonal.** The windows forecast here hold 576 five-minute samples (two days); a
//! daily SARIMA would have a period of 288 and needs three cycles of history, and a seasonal
//! search at that period is far too slow for a node agent. The search is the non-seasonal one
//! (`p, q ≤ 5`, `d ≤ 2`), as statsforecast's AutoARIMA is without a season length.
//!
//! **Timestamps.** The model wants a timestamped series; the forecaster only sees evenly
//! spaced values, so they get synthetic timestamps one step apart (only their order matters
//! to a non-seasonal ARIMA).
//!
//! **Constant histories.** On a constant history (an idle VM at exactly 0%) there is nothing
//! to fit; the forecast is the constant with zero-width intervals, as every baseline gives.
//!
//! **Clipping.** When the history is non-negative (resource usage), the point forecast and
//! the bounds are clipped at zero, as the default policy does.

use anofox_forecast::core::TimeSeries;
use anofox_forecast::models::arima::AutoARIMA;
use anofox_forecast::models::Forecaster as _;

use super::{check_history, check_request, Fitted, Forecast, ForecastError, Forecaster, Interval};

const NAME: &str = "auto_arima";

/// Non-seasonal AutoARIMA, order chosen by AICc ([`crate::forecast::arima`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Arima;

/// A fitted [`Arima`].
pub enum FittedArima {
    Model {
        model: Box<AutoARIMA>,
        /// Clip forecasts at zero (the history never went below).
        non_negative: bool,
    },
    Constant(f64),
}

impl std::fmt::Debug for FittedArima {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FittedArima::Model { model, .. } => f
                .debug_struct("FittedArima")
                .field("order", &model.selected_order())
                .finish(),
            FittedArima::Constant(c) => f.debug_tuple("Constant").field(c).finish(),
        }
    }
}

fn wrap(op: &'static str, e: anofox_forecast::ForecastError) -> ForecastError {
    ForecastError::Model {
        model: NAME,
        op,
        source: Box::new(e),
    }
}

impl Forecaster for Arima {
    type Fitted = FittedArima;
    fn name(&self) -> &'static str {
        NAME
    }
    fn fit(&self, y: &[f64]) -> Result<FittedArima, ForecastError> {
        // auto.arima's own minimum for a non-seasonal search.
        check_history(NAME, y, 10)?;
        let first = y[0];
        if y.iter().all(|&v| v == first) {
            return Ok(FittedArima::Constant(first));
        }
        let epoch = chrono::DateTime::<chrono::Utc>::UNIX_EPOCH;
        let stamps = (0..y.len() as i64)
            .map(|i| epoch + chrono::TimeDelta::seconds(i))
            .collect();
        let series = TimeSeries::univariate(stamps, y.to_vec()).map_err(|e| wrap("fit", e))?;
        let mut model = AutoARIMA::new();
        model.fit(&series).map_err(|e| wrap("fit", e))?;
        Ok(FittedArima::Model {
            model: Box::new(model),
            non_negative: y.iter().all(|&v| v >= 0.0),
        })
    }
}

impl Fitted for FittedArima {
    fn predict(&self, horizon: usize, levels: &[f64]) -> Result<Forecast, ForecastError> {
        check_request(horizon, levels)?;
        let (model, non_negative) = match self {
            FittedArima::Constant(c) => return Ok(Forecast::flat(*c, horizon, levels)),
            FittedArima::Model {
                model,
                non_negative,
            } => (model, *non_negative),
        };
        let clip = |v: &[f64]| -> Vec<f64> {
            if non_negative {
                v.iter().map(|x| x.max(0.0)).collect()
            } else {
                v.to_vec()
            }
        };
        if levels.is_empty() {
            let f = model.predict(horizon).map_err(|e| wrap("predict", e))?;
            return Ok(Forecast {
                point: clip(f.primary()),
                intervals: Vec::new(),
            });
        }
        // Each interval forecast carries the point forecast too (the model computes it
        // first): it is taken from there rather than predicted once more.
        let mut point = Vec::new();
        let mut intervals = Vec::with_capacity(levels.len());
        for &level in levels {
            let f = model
                .predict_with_intervals(horizon, level)
                .map_err(|e| wrap("predict intervals", e))?;
            let (Ok(lower), Ok(upper)) = (f.lower_series(0), f.upper_series(0)) else {
                return Err(ForecastError::Model {
                    model: NAME,
                    op: "predict intervals",
                    source: "the model returned no intervals".into(),
                });
            };
            intervals.push(Interval {
                level,
                lower: clip(lower),
                upper: clip(upper),
            });
            point = clip(f.primary());
        }
        Ok(Forecast { point, intervals })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An AR(1) around 50 (phi 0.8): the forecast decays from the last value towards the
    /// mean, and the intervals widen with the horizon and with the level.
    #[test]
    fn an_ar1_forecast_reverts_to_its_mean() {
        let mut y = vec![50.0];
        for i in 1..400 {
            let prev: f64 = y[i - 1];
            y.push(50.0 + 0.8 * (prev - 50.0) + 3.0 * crate::forecast::test_noise(i));
        }
        *y.last_mut().unwrap() = 70.0;
        let f = Arima.fit(&y).unwrap().predict(24, &[0.8, 0.95]).unwrap();
        assert!(f.point[0] < 70.0 && f.point[0] > 55.0, "{:?}", f.point);
        assert!((f.point[23] - 50.0).abs() < 5.0, "{:?}", f.point);
        let (i80, i95) = (f.interval(0.8).unwrap(), f.interval(0.95).unwrap());
        for h in 0..24 {
            assert!(i95.lower[h] <= i80.lower[h] && i80.upper[h] <= i95.upper[h]);
            assert!(i80.lower[h] <= f.point[h] && f.point[h] <= i80.upper[h]);
        }
        assert!(i95.upper[23] - i95.lower[23] > i95.upper[0] - i95.lower[0]);
    }

    #[test]
    fn constant_and_short_histories() {
        let f = Arima.fit(&[0.0; 50]).unwrap().predict(3, &[0.8]).unwrap();
        assert_eq!(f.point, vec![0.0; 3]);
        assert_eq!(f.interval(0.8).unwrap().upper, vec![0.0; 3]);
        assert!(matches!(
            Arima.fit(&[1.0, 2.0, 3.0]),
            Err(ForecastError::TooShort { needed: 10, .. })
        ));
    }

    /// A non-negative series is never forecast below zero.
    #[test]
    fn forecasts_of_usage_are_clipped_at_zero() {
        let y: Vec<f64> = (0..200)
            .map(|i| (100.0 - i as f64).max(0.0) + (i % 2) as f64)
            .collect();
        let f = Arima.fit(&y).unwrap().predict(12, &[0.95]).unwrap();
        assert!(f.point.iter().all(|&v| v >= 0.0), "{:?}", f.point);
        assert!(f.interval(0.95).unwrap().lower.iter().all(|&v| v >= 0.0));
    }
}
