//! Rolling-origin evaluation of every model on every series of a [`Dataset`].
//!
//! For a series of `n` points, origins are `t = window, window + stride, …` while
//! `t + horizon <= n`; at each origin every model is fitted to `y[t − window .. t]` (a sliding
//! window of fixed length) and forecasts `y[t .. t + horizon]`. A fit or forecast that fails
//! is replaced by the last value for scoring and counted in `failures`, so every model is
//! scored on exactly the same points. Per-series metrics are those of [`super::metrics`];
//! aggregates are means over series, except `ms_per_fit` (total time over total fits).

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    },
    time::Instant,
};

use super::{
    data::{Dataset, SkipReason, Skipped},
    metrics::Accumulator,
    models::{DecayingPercentile, Ets, LastValue, Mstl, SeasonalNaive},
    policy::Adaptive,
    DynForecaster, Fitted, Forecaster,
};

/// Why a backtest could not run.
#[derive(Debug, thiserror::Error)]
pub enum BacktestError {
    #[error("invalid {what}: {reason}")]
    InvalidConfig { what: &'static str, reason: String },
    #[error("unknown model {name:?} (known: {known})")]
    UnknownModel { name: String, known: String },
    #[error(
        "model {name:?} is not in this build: it needs the `{feature}` cargo feature \
         (cargo build --release -p shadow-agent --features {feature})"
    )]
    NotBuilt { name: String, feature: &'static str },
    #[error("no series can be evaluated ({skipped} skipped: {first})")]
    NoSeries { skipped: usize, first: String },
}

impl BacktestError {
    /// Every backtest error is a problem with what was asked.
    pub fn exit_code(&self) -> u8 {
        2
    }
}

/// The models a backtest can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// The default policy ([`Adaptive`]).
    Adaptive,
    LastValue,
    SeasonalNaive,
    Vpa,
    AutoEts,
    Mstl,
    /// Prophet (augurs-prophet, wasmstan backend): only in builds with the `prophet` feature.
    #[cfg(feature = "prophet")]
    Prophet,
    /// AutoARIMA (anofox-forecast): only in builds with the `arima` feature.
    #[cfg(feature = "arima")]
    AutoArima,
}

/// Models that exist only in builds with a cargo feature: (name, feature).
const FEATURE_MODELS: [(&str, &str); 2] = [("prophet", "prophet"), ("auto_arima", "arima")];

impl ModelKind {
    /// Every model of this build (the backtest's default set).
    pub const ALL: &'static [ModelKind] = &[
        ModelKind::Adaptive,
        ModelKind::LastValue,
        ModelKind::SeasonalNaive,
        ModelKind::Vpa,
        ModelKind::AutoEts,
        ModelKind::Mstl,
        #[cfg(feature = "prophet")]
        ModelKind::Prophet,
        #[cfg(feature = "arima")]
        ModelKind::AutoArima,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Adaptive => Forecaster::name(&Adaptive::default()),
            ModelKind::LastValue => Forecaster::name(&LastValue),
            ModelKind::SeasonalNaive => Forecaster::name(&SeasonalNaive::default()),
            ModelKind::Vpa => Forecaster::name(&DecayingPercentile { half_life: 1.0 }),
            ModelKind::AutoEts => Forecaster::name(&Ets),
            ModelKind::Mstl => Forecaster::name(&Mstl),
            #[cfg(feature = "prophet")]
            ModelKind::Prophet => Forecaster::name(&super::prophet::Prophet::default()),
            #[cfg(feature = "arima")]
            ModelKind::AutoArima => Forecaster::name(&super::arima::Arima),
        }
    }

    /// Whether this is the policy the agent uses by default.
    pub fn is_default(self) -> bool {
        self == ModelKind::Adaptive
    }

    /// Parses a model name as printed in reports. A model this build lacks (its cargo
    /// feature is off) is [`BacktestError::NotBuilt`], naming the feature.
    pub fn parse(name: &str) -> Result<ModelKind, BacktestError> {
        if let Some(m) = Self::ALL.iter().copied().find(|m| m.name() == name) {
            return Ok(m);
        }
        if let Some(&(_, feature)) = FEATURE_MODELS.iter().find(|(n, _)| *n == name) {
            return Err(BacktestError::NotBuilt {
                name: name.to_owned(),
                feature,
            });
        }
        Err(BacktestError::UnknownModel {
            name: name.to_owned(),
            known: Self::ALL
                .iter()
                .map(|m| m.name())
                .collect::<Vec<_>>()
                .join(","),
        })
    }

    /// The model for series sampled every `step_s` seconds, forecasting up to `horizon`.
    pub fn build(self, horizon: usize, step_s: f64) -> Box<dyn DynForecaster> {
        match self {
            ModelKind::Adaptive => Box::new(Adaptive::with_horizon(horizon)),
            ModelKind::LastValue => Box::new(LastValue),
            ModelKind::SeasonalNaive => Box::new(SeasonalNaive::default()),
            // VPA's half-life is 24 hours.
            ModelKind::Vpa => Box::new(DecayingPercentile {
                half_life: (86_400.0 / step_s.max(1e-9)).max(1.0),
            }),
            ModelKind::AutoEts => Box::new(Ets),
            ModelKind::Mstl => Box::new(Mstl),
            #[cfg(feature = "prophet")]
            ModelKind::Prophet => {
                // Compile the shared WebAssembly component here, outside the timed fits.
                super::prophet::Prophet::warm_up();
                Box::new(super::prophet::Prophet::with_step(step_s))
            }
            #[cfg(feature = "arima")]
            ModelKind::AutoArima => Box::new(super::arima::Arima),
        }
    }
}

/// What to evaluate and how.
#[derive(Debug, Clone)]
pub struct BacktestConfig {
    /// Training window length (samples).
    pub window: usize,
    /// Forecast steps scored at every origin.
    pub horizon: usize,
    /// Samples between consecutive origins.
    pub stride: usize,
    /// Interval levels in (0, 1).
    pub levels: Vec<f64>,
    /// At most this many origins per series, evenly spread (all if `None`).
    pub max_origins: Option<usize>,
    /// At most this many series (the first ones in the file; all if `None`).
    pub max_series: Option<usize>,
    /// Worker threads (series are evaluated in parallel).
    pub threads: usize,
    /// Season of the MASE scale in samples (1: one-step naive). `None`: one day at the
    /// series' step if that is shorter than the window, else 1 ([`BacktestConfig::mase_season_for`]).
    pub mase_season: Option<usize>,
}

impl BacktestConfig {
    fn validate(&self) -> Result<(), BacktestError> {
        let bad = |what, reason: &str| {
            Err(BacktestError::InvalidConfig {
                what,
                reason: reason.to_owned(),
            })
        };
        if self.window < 2 {
            return bad("window", "must be at least 2");
        }
        if self.horizon == 0 {
            return bad("horizon", "must be at least 1");
        }
        if self.stride == 0 {
            return bad("stride", "must be at least 1");
        }
        if self.mase_season.is_some_and(|m| m == 0 || m >= self.window) {
            return bad(
                "MASE season",
                "must be at least 1 and shorter than the window",
            );
        }
        if self.max_origins == Some(0) {
            return bad("max origins", "must be at least 1");
        }
        for &l in &self.levels {
            if !(l > 0.0 && l < 1.0) {
                return bad(
                    "levels",
                    &format!("{} is not a percentage in (0, 100)", l * 100.0),
                );
            }
        }
        Ok(())
    }

    /// The MASE season for a series sampled every `step_s` seconds.
    pub fn mase_season_for(&self, step_s: f64) -> usize {
        match self.mase_season {
            Some(m) => m.max(1),
            None => {
                let day = (86_400.0 / step_s.max(1e-9)).round() as usize;
                if day >= 1 && day < self.window {
                    day
                } else {
                    1
                }
            }
        }
    }

    /// Origins for a series of `n` points.
    pub fn origins(&self, n: usize) -> Vec<usize> {
        let mut all: Vec<usize> = (self.window..=n.saturating_sub(self.horizon))
            .step_by(self.stride)
            .collect();
        if let Some(m) = self.max_origins {
            if all.len() > m {
                let len = all.len();
                all = (0..m)
                    .map(|i| {
                        all[if m == 1 {
                            len - 1
                        } else {
                            i * (len - 1) / (m - 1)
                        }]
                    })
                    .collect();
            }
        }
        all
    }
}

/// The key of a level in reports: its percentage, e.g. "80" or "99.5".
pub fn level_key(level: f64) -> String {
    let p = (level * 100.0 * 1e6).round() / 1e6;
    format!("{p}")
}

/// One model's scores, on one series or aggregated.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelScore {
    pub name: &'static str,
    pub default: bool,
    /// Per-series MASE (ratio of means, [`super::metrics`]); aggregated: mean over series.
    pub mase: f64,
    /// Mean over origins of each origin's MAE / scale (the earlier definition).
    pub mase_per_origin: f64,
    pub smape: f64,
    pub coverage: BTreeMap<String, f64>,
    pub width95: f64,
    /// Wall-clock milliseconds per fit + forecast.
    pub ms_per_fit: f64,
    /// CPU milliseconds (thread CPU clock) per fit + forecast: what a fit costs on a busy
    /// machine, where the wall clock also counts time waiting for a core.
    pub cpu_ms_per_fit: f64,
    pub fits: usize,
    pub failures: usize,
}

/// One series' results.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SeriesReport {
    pub id: String,
    pub length: usize,
    pub origins: usize,
    pub imputed: usize,
    /// Origins whose window was constant (no MASE scale).
    pub unscaled_origins: usize,
    pub models: Vec<ModelScore>,
}

/// The whole evaluation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub series: usize,
    pub metric: String,
    pub window: usize,
    pub horizon: usize,
    pub stride: usize,
    pub origins: usize,
    /// Season of the MASE scale (of the first series; 1: one-step naive).
    pub mase_season: usize,
    pub models: Vec<ModelScore>,
    pub skipped: Vec<Skipped>,
    pub per_series: Vec<SeriesReport>,
}

impl Report {
    /// The aggregate of the model called `name`.
    pub fn model(&self, name: &str) -> Option<&ModelScore> {
        self.models.iter().find(|m| m.name == name)
    }

    /// The aggregate table as text.
    pub fn table(&self, levels: &[f64]) -> String {
        let mut s = format!(
            "{} series ({} skipped), metric {}, window {}, horizons 1-{}, stride {}, {} origins, MASE season {}\n",
            self.series,
            self.skipped.len(),
            self.metric,
            self.window,
            self.horizon,
            self.stride,
            self.origins,
            self.mase_season
        );
        s.push_str(&format!("{:<16} {:>7} {:>8}", "model", "MASE", "sMAPE"));
        for l in levels {
            s.push_str(&format!(" {:>7}", format!("cov{}", level_key(*l))));
        }
        s.push_str(&format!(
            " {:>12} {:>9} {:>9} {:>8}\n",
            "width95", "ms/fit", "cpu_ms", "failures"
        ));
        for m in &self.models {
            let name = if m.default {
                format!("{} *", m.name)
            } else {
                m.name.to_string()
            };
            s.push_str(&format!("{:<16} {:>7.3} {:>8.2}", name, m.mase, m.smape));
            for l in levels {
                let c = m.coverage.get(&level_key(*l)).copied().unwrap_or(f64::NAN);
                s.push_str(&format!(" {:>7.3}", c));
            }
            s.push_str(&format!(
                " {:>12.4} {:>9.3} {:>9.3} {:>8}\n",
                m.width95, m.ms_per_fit, m.cpu_ms_per_fit, m.failures
            ));
        }
        s.push_str("* default policy\n");
        for sk in &self.skipped {
            s.push_str(&format!("skipped {}: {}\n", sk.id, sk.reason));
        }
        s
    }
}

fn score(kind: ModelKind, acc: &Accumulator, levels: &[f64], fit_ms: Option<f64>) -> ModelScore {
    ModelScore {
        name: kind.name(),
        default: kind.is_default(),
        mase: acc.mase(),
        mase_per_origin: acc.mase_per_origin(),
        smape: acc.smape(),
        coverage: levels
            .iter()
            .enumerate()
            .map(|(i, &l)| (level_key(l), acc.coverage(i)))
            .collect(),
        width95: acc.width95(),
        ms_per_fit: fit_ms.unwrap_or_else(|| acc.ms_per_fit()),
        cpu_ms_per_fit: if acc.fits == 0 {
            f64::NAN
        } else {
            acc.fit_cpu_ns as f64 / 1e6 / acc.fits as f64
        },
        fits: acc.fits,
        failures: acc.failures,
    }
}

/// Per-model accumulators of one series, and its number of origins.
type SeriesAccs = (Vec<Accumulator>, usize);

fn evaluate_series(
    values: &[f64],
    step_s: f64,
    models: &[ModelKind],
    cfg: &BacktestConfig,
) -> SeriesAccs {
    let built: Vec<Box<dyn DynForecaster>> = models
        .iter()
        .map(|m| m.build(cfg.horizon, step_s))
        .collect();
    let mut accs: Vec<Accumulator> = models
        .iter()
        .map(|_| Accumulator::with_mase_season(cfg.levels.len(), cfg.mase_season_for(step_s)))
        .collect();
    let origins = cfg.origins(values.len());
    for &t in &origins {
        let train = &values[t - cfg.window..t];
        let actual = &values[t..t + cfg.horizon];
        for (model, acc) in built.iter().zip(accs.iter_mut()) {
            let start = Instant::now();
            let cpu_start = super::thread_cpu_ns();
            let result = model
                .fit_dyn(train)
                .and_then(|f| f.predict(cfg.horizon, &cfg.levels));
            acc.fit_cpu_ns += super::thread_cpu_ns().saturating_sub(cpu_start);
            acc.fit_ns += start.elapsed().as_nanos();
            acc.fits += 1;
            let forecast = match result {
                Ok(f) => f,
                Err(e) => {
                    tracing::debug!(model = model.name(), origin = t, error = %e, "fallback to last value");
                    acc.failures += 1;
                    match LastValue
                        .fit(train)
                        .and_then(|f| f.predict(cfg.horizon, &cfg.levels))
                    {
                        Ok(f) => f,
                        Err(_) => continue,
                    }
                }
            };
            acc.add(train, actual, &forecast, &cfg.levels);
        }
    }
    (accs, origins.len())
}

/// Runs the evaluation.
pub fn run(
    dataset: &Dataset,
    models: &[ModelKind],
    cfg: &BacktestConfig,
) -> Result<Report, BacktestError> {
    run_with_progress(dataset, models, cfg, &|_, _| {})
}

/// [`run`], calling `progress(done, total)` (series) as each series is evaluated.
pub fn run_with_progress(
    dataset: &Dataset,
    models: &[ModelKind],
    cfg: &BacktestConfig,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Report, BacktestError> {
    cfg.validate()?;
    if models.is_empty() {
        return Err(BacktestError::InvalidConfig {
            what: "models",
            reason: "none selected".into(),
        });
    }
    let mut skipped = dataset.skipped.clone();
    let needed = cfg.window + cfg.horizon;
    let mut todo = Vec::new();
    for s in &dataset.series {
        if s.values.len() < needed {
            skipped.push(Skipped {
                id: s.id.clone(),
                reason: SkipReason::TooShort {
                    needed,
                    got: s.values.len(),
                },
            });
        } else if cfg.max_series.is_none_or(|m| todo.len() < m) {
            todo.push(s);
        }
    }
    if todo.is_empty() {
        return Err(BacktestError::NoSeries {
            skipped: skipped.len(),
            first: skipped
                .first()
                .map(|s| format!("{}: {}", s.id, s.reason))
                .unwrap_or_else(|| "the file has no series".into()),
        });
    }

    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    progress(0, todo.len());
    let results: Mutex<Vec<Option<SeriesAccs>>> = Mutex::new(vec![None; todo.len()]);
    let threads = cfg.threads.clamp(1, todo.len());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(series) = todo.get(i) else { break };
                let r = evaluate_series(&series.values, series.step_s, models, cfg);
                if let Ok(mut all) = results.lock() {
                    all[i] = Some(r);
                }
                progress(done.fetch_add(1, Ordering::Relaxed) + 1, todo.len());
            });
        }
    });
    let results = results.into_inner().unwrap_or_else(|p| p.into_inner());

    let mut per_series = Vec::with_capacity(todo.len());
    let mut totals: Vec<(f64, usize, f64)> = vec![(0.0, 0, 0.0); models.len()]; // (ns, fits, cpu ns)
    let mut total_origins = 0;
    for (series, r) in todo.iter().zip(results) {
        let Some((accs, origins)) = r else { continue };
        total_origins += origins;
        for (tot, acc) in totals.iter_mut().zip(&accs) {
            tot.0 += acc.fit_ns as f64;
            tot.1 += acc.fits;
            tot.2 += acc.fit_cpu_ns as f64;
        }
        per_series.push(SeriesReport {
            id: series.id.clone(),
            length: series.values.len(),
            origins,
            imputed: series.imputed,
            unscaled_origins: accs.first().map_or(0, |a| a.unscaled),
            models: models
                .iter()
                .zip(&accs)
                .map(|(&m, a)| score(m, a, &cfg.levels, None))
                .collect(),
        });
    }

    let mean_over = |mi: usize, f: &dyn Fn(&ModelScore) -> f64| -> f64 {
        let v: Vec<f64> = per_series
            .iter()
            .map(|s| f(&s.models[mi]))
            .filter(|x| x.is_finite())
            .collect();
        if v.is_empty() {
            f64::NAN
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    let aggregate = models
        .iter()
        .enumerate()
        .map(|(mi, &m)| ModelScore {
            name: m.name(),
            default: m.is_default(),
            mase: mean_over(mi, &|s| s.mase),
            mase_per_origin: mean_over(mi, &|s| s.mase_per_origin),
            smape: mean_over(mi, &|s| s.smape),
            coverage: cfg
                .levels
                .iter()
                .map(|&l| {
                    let k = level_key(l);
                    let v = mean_over(mi, &|s| s.coverage.get(&k).copied().unwrap_or(f64::NAN));
                    (k, v)
                })
                .collect(),
            width95: mean_over(mi, &|s| s.width95),
            ms_per_fit: if totals[mi].1 == 0 {
                f64::NAN
            } else {
                totals[mi].0 / 1e6 / totals[mi].1 as f64
            },
            cpu_ms_per_fit: if totals[mi].1 == 0 {
                f64::NAN
            } else {
                totals[mi].2 / 1e6 / totals[mi].1 as f64
            },
            fits: per_series.iter().map(|s| s.models[mi].fits).sum(),
            failures: per_series.iter().map(|s| s.models[mi].failures).sum(),
        })
        .collect();

    Ok(Report {
        series: per_series.len(),
        metric: dataset.metric.clone(),
        window: cfg.window,
        horizon: cfg.horizon,
        stride: cfg.stride,
        origins: total_origins,
        mase_season: todo.first().map_or(1, |s| cfg.mase_season_for(s.step_s)),
        models: aggregate,
        skipped,
        per_series,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::data::Series;

    fn cfg() -> BacktestConfig {
        BacktestConfig {
            window: 200,
            horizon: 6,
            stride: 6,
            levels: vec![0.8, 0.95],
            max_origins: None,
            max_series: None,
            threads: 2,
            mase_season: Some(1),
        }
    }

    #[test]
    fn origins_are_spread_and_bounded() {
        let c = cfg();
        assert_eq!(c.origins(206), vec![200]);
        assert_eq!(c.origins(205), Vec::<usize>::new());
        assert_eq!(c.origins(218), vec![200, 206, 212]);
        let few = BacktestConfig {
            max_origins: Some(2),
            ..cfg()
        };
        assert_eq!(few.origins(218), vec![200, 212]);
    }

    #[test]
    fn backtest_scores_models_and_skips_short_series() {
        let series = |id: &str, n: usize| Series {
            id: id.into(),
            step_s: 300.0,
            start_s: 0.0,
            values: (0..n)
                .map(|i| 10.0 + 3.0 * crate::forecast::test_noise(i))
                .collect(),
            imputed: 0,
            dropped: 0,
        };
        let d = Dataset {
            metric: "cpu".into(),
            series: vec![series("long", 400), series("short", 150)],
            skipped: vec![],
        };
        let r = run(
            &d,
            &[ModelKind::Adaptive, ModelKind::LastValue, ModelKind::Vpa],
            &cfg(),
        )
        .unwrap();
        assert_eq!(r.series, 1);
        assert_eq!(r.skipped.len(), 1);
        assert_eq!(
            r.skipped[0].reason,
            SkipReason::TooShort {
                needed: 206,
                got: 150
            }
        );
        let ad = r.model("adaptive").unwrap();
        let lv = r.model("last_value").unwrap();
        assert!(ad.default && !lv.default);
        // On white noise the default policy beats the last value.
        assert!(ad.mase < lv.mase, "{} vs {}", ad.mase, lv.mase);
        assert_eq!(ad.fits, 33);
        assert_eq!(ad.failures, 0);
        assert!(r.table(&[0.8, 0.95]).contains("adaptive *"));
        let json = serde_json::to_value(&r).unwrap();
        assert!(json["models"][0]["coverage"]["80"].is_number());
    }

    #[test]
    fn bad_config_and_model_names_are_errors() {
        let d = Dataset {
            metric: "cpu".into(),
            series: vec![],
            skipped: vec![],
        };
        let bad = BacktestConfig {
            levels: vec![80.0],
            ..cfg()
        };
        assert!(matches!(
            run(&d, &[ModelKind::LastValue], &bad),
            Err(BacktestError::InvalidConfig { what: "levels", .. })
        ));
        assert!(matches!(
            run(&d, &[ModelKind::LastValue], &cfg()),
            Err(BacktestError::NoSeries { .. })
        ));
        assert!(matches!(
            ModelKind::parse("arima"),
            Err(BacktestError::UnknownModel { .. })
        ));
        assert_eq!(ModelKind::parse("mstl_ets").unwrap(), ModelKind::Mstl);
    }

    /// One series of 5-minute samples, for the optional models' backtests.
    #[cfg(any(feature = "prophet", feature = "arima"))]
    fn five_minute_series(values: Vec<f64>) -> Dataset {
        Dataset {
            metric: "cpu".into(),
            series: vec![Series {
                id: "s".into(),
                step_s: 300.0,
                start_s: 0.0,
                values,
                imputed: 0,
                dropped: 0,
            }],
            skipped: vec![],
        }
    }

    #[cfg(not(feature = "prophet"))]
    #[test]
    fn prophet_without_the_feature_names_the_feature() {
        let err = ModelKind::parse("prophet").unwrap_err();
        assert!(matches!(
            err,
            BacktestError::NotBuilt {
                feature: "prophet",
                ..
            }
        ));
        let msg = err.to_string();
        assert!(
            msg.contains("not in this build")
                && msg.contains("cargo build --release -p shadow-agent --features prophet"),
            "{msg}"
        );
        assert_eq!(err.exit_code(), 2);
        assert!(!ModelKind::ALL.iter().any(|m| m.name() == "prophet"));
    }

    #[cfg(feature = "prophet")]
    #[test]
    fn prophet_is_a_model_with_the_feature() {
        assert_eq!(ModelKind::parse("prophet").unwrap(), ModelKind::Prophet);
        assert!(ModelKind::ALL.contains(&ModelKind::Prophet));
    }

    /// Prophet through the backtest on a daily-seasonal series (5-minute samples): it is
    /// scored without failures and beats the last value.
    #[cfg(feature = "prophet")]
    #[test]
    fn prophet_backtests_a_daily_season() {
        let day = 288.0;
        let values: Vec<f64> = (0..(3 * 288 + 60))
            .map(|i| {
                40.0 + 15.0 * (i as f64 * std::f64::consts::TAU / day).sin()
                    + 2.0 * crate::forecast::test_noise(i)
            })
            .collect();
        let d = five_minute_series(values);
        let c = BacktestConfig {
            window: 576,
            horizon: 12,
            stride: 12,
            max_origins: Some(4),
            mase_season: None,
            ..cfg()
        };
        let r = run(&d, &[ModelKind::Prophet, ModelKind::LastValue], &c).unwrap();
        let (p, lv) = (r.model("prophet").unwrap(), r.model("last_value").unwrap());
        assert_eq!((p.fits, p.failures), (4, 0));
        assert!(p.mase < lv.mase, "{} vs {}", p.mase, lv.mase);
        assert!(p.coverage["95"] >= p.coverage["80"]);
    }

    #[cfg(not(feature = "arima"))]
    #[test]
    fn auto_arima_without_the_feature_names_the_feature() {
        let err = ModelKind::parse("auto_arima").unwrap_err();
        assert!(matches!(
            err,
            BacktestError::NotBuilt {
                feature: "arima",
                ..
            }
        ));
        assert!(
            err.to_string()
                .contains("cargo build --release -p shadow-agent --features arima"),
            "{err}"
        );
        assert!(!ModelKind::ALL.iter().any(|m| m.name() == "auto_arima"));
    }

    /// AutoARIMA through the backtest on an AR(1) series (phi 0.5): a twelve-step forecast
    /// reverts to the mean, which the last value cannot, so it scores better, without
    /// failures.
    #[cfg(feature = "arima")]
    #[test]
    fn auto_arima_backtests_an_ar1_series() {
        assert_eq!(
            ModelKind::parse("auto_arima").unwrap(),
            ModelKind::AutoArima
        );
        assert!(ModelKind::ALL.contains(&ModelKind::AutoArima));
        let mut values = vec![50.0];
        for i in 1..700 {
            let prev: f64 = values[i - 1];
            values.push(50.0 + 0.5 * (prev - 50.0) + 4.0 * crate::forecast::test_noise(i));
        }
        let d = five_minute_series(values);
        let c = BacktestConfig {
            window: 576,
            horizon: 12,
            stride: 12,
            max_origins: Some(8),
            mase_season: Some(1),
            ..cfg()
        };
        let r = run(&d, &[ModelKind::AutoArima, ModelKind::LastValue], &c).unwrap();
        let (a, lv) = (
            r.model("auto_arima").unwrap(),
            r.model("last_value").unwrap(),
        );
        assert_eq!((a.fits, a.failures), (8, 0));
        assert!(a.mase < lv.mase, "{} vs {}", a.mase, lv.mase);
        assert!(a.coverage["95"] >= a.coverage["80"]);
    }
}
