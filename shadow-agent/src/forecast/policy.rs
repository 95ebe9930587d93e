//! The default policy, [`Adaptive`]: per series and per horizon step, the candidate forecaster
//! with the lowest recent rolling-origin error, with intervals calibrated on the policy's own
//! recent errors (split conformal).
//!
//! At fit time, on the series' own history:
//! 1. Candidates (all cheap): the last value; simple exponential smoothing at several fixed
//!    smoothing constants; medians of the last few samples; exponentially weighted medians of
//!    the whole history (a long memory that a spike does not move: the estimator behind
//!    Kubernetes' VPA, which beats every short-memory candidate on noisy, level series such as
//!    most VMs' memory); and, if the window has a season ([`SeasonDetector`]), seasonal naive,
//!    seasonal naive shifted to the current level, and per-phase medians over the last few
//!    cycles. Besides the dominant season, the detector is asked for the dominant *short*
//!    one (at most `n / short_season_divisor` samples, so there are many cycles to take
//!    medians over): an hourly job on a series whose strongest pattern is daily.
//! 2. Every candidate forecasts from every recent origin `t` (history `y[..t]`), so its error
//!    at each step `h` is known for every origin whose target is in the history.
//! 3. For step `h`, the candidates are ranked by their absolute error summed over the
//!    `select_window` origins just before `t` whose targets were already observed at `t`; the
//!    policy's forecast is the median of the best `combine` of them, keeping only those within
//!    `combine_within` of the best (a clearly better candidate, e.g. the season, is not diluted). This is replayed for
//!    every recent origin, so the policy's own out-of-sample errors are known too (the
//!    selection never sees the error it is scored on).
//! 4. The final forecast is that rule applied at the end of the history. Its interval at level
//!    `l` adds the finite-sample conformal quantiles of the policy's last `calibration` signed
//!    errors at that step, at a level recalibrated per series and per step by replaying
//!    adaptive conformal inference over the `aci_replay` origins before those (each replayed
//!    interval built only from errors already observed at its origin; a miss widens, a hit
//!    narrows), so the stated coverage is the coverage the series' own recent errors support.
//!    Errors may be divided by the local volatility at their origin and multiplied by
//!    today's (`local_scale`; off by default: on the public traces it narrowed the
//!    miscalibration at 80% but widened the mean 95% interval 2-3x after spikes). If the
//!    history is non-negative, forecasts and bounds are clipped at zero (resource usage
//!    cannot go below it).
//!
//! A series that sits at one exact value most of the time (an idle VM at 0%) is covered more
//! often than nominal by any deterministic interval (`[0, 0]` covers every idle sample); the
//! recalibration cannot narrow below zero width.
//!
//! The cost is a few passes over the window per candidate: about 2 ms of CPU for a
//! 576-sample window and 12 steps.

use super::{
    check_history, check_request, conformal_offsets, season::SeasonDetector, sort_floats, Fitted,
    Forecast, ForecastError, Forecaster, Interval,
};

/// The default policy's parameters; [`Default`] holds the defaults used everywhere.
#[derive(Debug, Clone)]
pub struct Adaptive {
    /// Longest horizon the fitted model can forecast.
    pub max_horizon: usize,
    /// Origins whose errors rank the candidates (fewer, down to 12, if the history is short).
    pub select_window: usize,
    /// Most recent policy errors the intervals are calibrated on, per step.
    pub calibration: usize,
    /// Fewest calibration errors a fit accepts.
    pub min_calibration: usize,
    /// Recent origins over which the interval level is recalibrated (adaptive conformal
    /// inference replayed on the series' own errors, per step); 0 turns it off.
    pub aci_replay: usize,
    /// Step size of that recalibration, relative to the nominal miscoverage `alpha0`: after
    /// each replayed origin the miscoverage rate `alpha` moves by
    /// `aci_gamma · alpha0 · (alpha0 − missed)` (0.15: 0.03 at 80%, 0.0075 at 95%).
    pub aci_gamma: f64,
    /// How many of the best-ranked candidates are combined (median) at most ...
    pub combine: usize,
    /// ... of those whose error is within this fraction of the best one's (1.0: up to twice
    /// the best one's error).
    pub combine_within: f64,
    /// Samples over which the local volatility (mean absolute one-step change) that scales
    /// the calibration errors is measured; 0 calibrates raw errors.
    pub local_scale: usize,
    /// Smoothing constants of the exponential-smoothing candidates.
    pub ses_alphas: Vec<f64>,
    /// Window lengths of the rolling-median candidates.
    pub median_windows: Vec<usize>,
    /// Half-lives, in samples, of the exponentially weighted median candidates.
    pub weighted_median_half_lives: Vec<f64>,
    /// Cycle counts of the per-phase seasonal median candidates (one per detected season).
    pub season_median_cycles: Vec<usize>,
    /// A short season is looked for among periods up to `n / short_season_divisor`; 0 turns
    /// the search off.
    pub short_season_divisor: usize,
    pub detector: SeasonDetector,
}

impl Default for Adaptive {
    fn default() -> Self {
        Self {
            max_horizon: 12,
            select_window: 144,
            calibration: 240,
            min_calibration: 20,
            aci_replay: 144,
            aci_gamma: 0.15,
            combine: 5,
            combine_within: 1.0,
            local_scale: 0,
            ses_alphas: vec![0.5, 0.25, 0.1],
            median_windows: vec![3, 6, 12, 24],
            weighted_median_half_lives: vec![48.0, 288.0],
            season_median_cycles: vec![3, 7, 15],
            short_season_divisor: 8,
            detector: SeasonDetector::default(),
        }
    }
}

impl Adaptive {
    /// A policy fitted for horizons up to `max_horizon`, other parameters default.
    pub fn with_horizon(max_horizon: usize) -> Self {
        Self {
            max_horizon,
            ..Self::default()
        }
    }

    /// Fewest samples a fit needs (enough to rank candidates and calibrate intervals).
    pub fn min_history(&self) -> usize {
        let hmax = self.max_horizon.max(1);
        let longest_median = self.median_windows.iter().copied().max().unwrap_or(1);
        let base = longest_median.max(self.local_scale + 1) + 2 * hmax + self.min_calibration;
        base + self.select_window.clamp(1, MIN_SELECT) + self.min_calibration + hmax
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Candidate {
    Last,
    Ses(f64),
    Median(usize),
    Seasonal(usize),
    SeasonalLevel { period: usize, k: usize },
    WeightedMedian(f64),
    SeasonalMedian { period: usize, cycles: usize },
}

impl Candidate {
    fn label(&self) -> String {
        match self {
            Candidate::Last => "last".into(),
            Candidate::Ses(a) => format!("ses{a}"),
            Candidate::Median(k) => format!("median{k}"),
            Candidate::Seasonal(p) => format!("snaive{p}"),
            Candidate::SeasonalLevel { period, k } => format!("snaive{period}+level{k}"),
            Candidate::WeightedMedian(hl) => format!("wmedian{hl}"),
            Candidate::SeasonalMedian { period, cycles } => format!("smedian{period}x{cycles}"),
        }
    }
}

/// A fitted [`Adaptive`]: per step, the forecast, the candidates behind it and the sorted
/// calibration errors.
#[derive(Debug, Clone)]
pub struct FittedAdaptive {
    point: Vec<f64>,
    chosen: Vec<Vec<Candidate>>,
    /// Per step, the policy's recent signed (scaled) errors, oldest first.
    errors: Vec<Vec<f64>>,
    /// How many of the newest errors one interval is computed from.
    calibration: usize,
    aci_replay: usize,
    aci_gamma: f64,
    /// Multiplies the calibration quantiles (the local volatility at the end of the history).
    scale_now: f64,
    clip_at_zero: bool,
    period: Option<usize>,
    short_period: Option<usize>,
}

impl FittedAdaptive {
    /// The season found in the history, if any.
    pub fn period(&self) -> Option<usize> {
        self.period
    }
    /// The short season found besides [`Self::period`], if any.
    pub fn short_period(&self) -> Option<usize> {
        self.short_period
    }
    /// Labels of the candidates combined at step `h` (1-based), for explanations.
    pub fn chosen(&self, h: usize) -> Vec<String> {
        self.chosen
            .get(h.wrapping_sub(1))
            .map(|c| c.iter().map(Candidate::label).collect())
            .unwrap_or_default()
    }
    /// Number of calibration errors at step `h` (1-based).
    pub fn calibration_size(&self, h: usize) -> usize {
        self.errors.get(h.wrapping_sub(1)).map_or(0, Vec::len)
    }
}

/// Median of a small slice (copied).
fn median(v: &[f64], buf: &mut Vec<f64>) -> f64 {
    buf.clear();
    buf.extend_from_slice(v);
    sort_floats(buf);
    let n = buf.len();
    if n % 2 == 1 {
        buf[n / 2]
    } else {
        0.5 * (buf[n / 2 - 1] + buf[n / 2])
    }
}

const NAME: &str = "adaptive";
/// Fewest origins the candidates are ranked on when the history is short.
const MIN_SELECT: usize = 12;

impl Forecaster for Adaptive {
    type Fitted = FittedAdaptive;
    fn name(&self) -> &'static str {
        NAME
    }

    fn fit(&self, y: &[f64]) -> Result<FittedAdaptive, ForecastError> {
        let hmax = self.max_horizon.max(1);
        let longest_median = self.median_windows.iter().copied().max().unwrap_or(1);
        let base = longest_median.max(self.local_scale + 1) + 2 * hmax + self.min_calibration;
        let min_select = self.select_window.clamp(1, MIN_SELECT);
        let needed = base + min_select;
        check_history(NAME, y, needed)?;
        let n = y.len();
        // A short history shrinks the selection window (down to MIN_SELECT origins) so that
        // at least as many origins are left for calibration.
        let s = self
            .select_window
            .min(((n - base) / 2).max(min_select))
            .max(1);

        let period = self.detector.detect(y);
        // Candidates with equal recent error are taken in this order (the ranking's sort is
        // stable): the least moved by a single sample first. A series idle at one value has
        // every candidate at zero error; after a lone spike the medians stay at the idle
        // value while the last value and smoothing jump with it.
        let mut cands: Vec<Candidate> = self
            .weighted_median_half_lives
            .iter()
            .map(|&hl| Candidate::WeightedMedian(hl.max(1.0)))
            .collect();
        cands.extend(
            self.median_windows
                .iter()
                .rev()
                .map(|&k| Candidate::Median(k)),
        );
        cands.extend(self.ses_alphas.iter().rev().map(|&a| Candidate::Ses(a)));
        cands.push(Candidate::Last);
        if let Some(p) = period {
            cands.push(Candidate::Seasonal(p));
            cands.push(Candidate::SeasonalLevel { period: p, k: 6 });
        }
        let short = match self.short_season_divisor {
            0 => None,
            // In the first differences, where a slow wave (a day) all but vanishes and
            // cannot mask a short pattern in the correlogram.
            d => {
                let diff: Vec<f64> = y.windows(2).map(|w| w[1] - w[0]).collect();
                self.detector.detect_up_to(&diff, n / d)
            }
        };
        let short = short.filter(|&q| Some(q) != period);
        for p in period.into_iter().chain(short) {
            cands.extend(
                self.season_median_cycles
                    .iter()
                    .filter(|&&c| c >= 2 && p * c < n)
                    .map(|&cycles| Candidate::SeasonalMedian { period: p, cycles }),
            );
        }

        // Origins t in [t0, n]: forecasts from history y[..t].
        let t0 = n
            .saturating_sub(s + self.calibration + self.aci_replay + 2 * hmax)
            .max(longest_median)
            .max(self.local_scale + 1);
        let origins = n - t0 + 1;
        let nc = cands.len();
        // fc[(c * origins + (t - t0)) * hmax + (h - 1)]; NaN where a candidate cannot forecast.
        let mut fc = vec![f64::NAN; nc * origins * hmax];
        let mut buf = Vec::with_capacity(longest_median);
        for (ci, cand) in cands.iter().enumerate() {
            let base = ci * origins * hmax;
            match *cand {
                Candidate::Last => {
                    for t in t0..=n {
                        fc[base + (t - t0) * hmax..][..hmax].fill(y[t - 1]);
                    }
                }
                Candidate::Ses(alpha) => {
                    let mut level = y[0];
                    for (i, &v) in y.iter().enumerate().take(n) {
                        // `level` is the forecast from origin i (history y[..i]).
                        if i >= t0 {
                            fc[base + (i - t0) * hmax..][..hmax].fill(level);
                        }
                        level += alpha * (v - level);
                    }
                    fc[base + (n - t0) * hmax..][..hmax].fill(level);
                }
                Candidate::Median(k) => {
                    for t in t0..=n {
                        let m = median(&y[t - k..t], &mut buf);
                        fc[base + (t - t0) * hmax..][..hmax].fill(m);
                    }
                }
                Candidate::Seasonal(p) => {
                    for t in t0.max(p)..=n {
                        for h in 1..=hmax {
                            fc[base + (t - t0) * hmax + h - 1] = y[t - p + (h - 1) % p];
                        }
                    }
                }
                Candidate::WeightedMedian(hl) => {
                    // Sample i weighs 2^((i - t0) / hl) (relative to the first origin so the
                    // weights stay finite); samples older than 40 half-lives before t0 weigh
                    // under 2^-40 and are left out. `sorted` holds (value, weight) of the
                    // history, ascending by value.
                    let from = t0.saturating_sub((40.0 * hl) as usize);
                    let mut sorted: Vec<(f64, f64)> = Vec::with_capacity(n - from);
                    let mut total = 0.0;
                    for i in from..n {
                        let v = y[i];
                        let w = ((i as f64 - t0 as f64) / hl).exp2();
                        let at = sorted.partition_point(|x| x.0 < v);
                        sorted.insert(at, (v, w));
                        total += w;
                        // History y[..=i] is origin i + 1.
                        if i + 1 >= t0 {
                            let half = 0.5 * total;
                            let mut acc = 0.0;
                            let mut m = v;
                            for &(x, wx) in &sorted {
                                acc += wx;
                                if acc >= half {
                                    m = x;
                                    break;
                                }
                            }
                            fc[base + (i + 1 - t0) * hmax..][..hmax].fill(m);
                        }
                    }
                }
                Candidate::SeasonalMedian { period: p, cycles } => {
                    // The forecast from origin t at step h is m[t + (h - 1) % p], with m[s] the
                    // median of y[s - p], y[s - 2p], ..., y[s - cycles·p] (all before t,
                    // since (h - 1) % p < p): one median per index, not per origin and step.
                    let first = t0.max(p * cycles);
                    let mut phase = Vec::with_capacity(cycles);
                    let m: Vec<f64> = (first..n + p)
                        .map(|s| {
                            phase.clear();
                            phase.extend((1..=cycles).map(|j| y[s - j * p]));
                            median(&phase, &mut buf)
                        })
                        .collect();
                    for t in first..=n {
                        for h in 1..=hmax {
                            fc[base + (t - t0) * hmax + h - 1] = m[t + (h - 1) % p - first];
                        }
                    }
                }
                Candidate::SeasonalLevel { period: p, k } => {
                    for t in t0.max(p + k)..=n {
                        let shift =
                            median(&y[t - k..t], &mut buf) - median(&y[t - p - k..t - p], &mut buf);
                        for h in 1..=hmax {
                            fc[base + (t - t0) * hmax + h - 1] = y[t - p + (h - 1) % p] + shift;
                        }
                    }
                }
            }
        }
        let at = |c: usize, t: usize, h: usize| fc[(c * origins + (t - t0)) * hmax + h - 1];

        // Local volatility at each origin: median |one-step change| over the last
        // `local_scale` samples (robust to a single spike), plus a tenth of the window's mean
        // so a flat stretch does not give zero width.
        let steps: Vec<f64> = y.windows(2).map(|w| (w[1] - w[0]).abs()).collect();
        let floor = 0.1 * steps.iter().sum::<f64>() / steps.len().max(1) as f64;
        let floor = if floor > 0.0 { floor } else { 1.0 };
        let vol: Vec<f64> = (t0..=n)
            .map(|t| {
                let k = self.local_scale;
                if k == 0 {
                    1.0
                } else {
                    median(&steps[t - 1 - k..t - 1], &mut buf) + floor
                }
            })
            .collect();

        let clip_at_zero = y.iter().all(|&v| v >= 0.0);
        let clip = |v: f64| if clip_at_zero { v.max(0.0) } else { v };
        let k = self.combine.clamp(1, nc);
        let mut point = Vec::with_capacity(hmax);
        let mut chosen = Vec::with_capacity(hmax);
        let mut errors = Vec::with_capacity(hmax);
        let mut abs_err = vec![f64::NAN; origins];
        let mut prefix = vec![0.0; origins + 1];
        let mut invalid = vec![0usize; origins + 1];
        // Per candidate prefix sums of |error| and of invalid counts, for this step.
        let mut scores_prefix: Vec<(Vec<f64>, Vec<usize>)> = Vec::with_capacity(nc);
        let mut ranked: Vec<(f64, usize)> = Vec::with_capacity(nc);
        let mut picks: Vec<f64> = Vec::with_capacity(k);
        for h in 1..=hmax {
            scores_prefix.clear();
            for c in 0..nc {
                for (i, e) in abs_err.iter_mut().enumerate() {
                    let t = t0 + i;
                    *e = if t + h - 1 < n {
                        (y[t + h - 1] - at(c, t, h)).abs()
                    } else {
                        f64::NAN
                    };
                }
                for i in 0..origins {
                    let bad = abs_err[i].is_nan();
                    prefix[i + 1] = prefix[i] + if bad { 0.0 } else { abs_err[i] };
                    invalid[i + 1] = invalid[i] + usize::from(bad);
                }
                scores_prefix.push((prefix.clone(), invalid.clone()));
            }
            // The policy's forecast from origin t at step h, or None before enough history.
            let mut policy_at = |t: usize, record: Option<&mut Vec<Candidate>>| -> Option<f64> {
                // Scored origins: [t - h - s + 1, t - h] (targets t' + h - 1 < t).
                let hi = t.checked_sub(h)?;
                let lo = (hi + 1).checked_sub(s)?;
                if lo < t0 {
                    return None;
                }
                let (a, b) = (lo - t0, hi - t0 + 1);
                ranked.clear();
                for (c, (p, inv)) in scores_prefix.iter().enumerate() {
                    if inv[b] - inv[a] == 0 && !at(c, t, h).is_nan() {
                        ranked.push((p[b] - p[a], c));
                    }
                }
                if ranked.is_empty() {
                    return None;
                }
                ranked.sort_by(|x, z| x.0.total_cmp(&z.0));
                let cutoff = ranked[0].0 * (1.0 + self.combine_within);
                let used = ranked
                    .iter()
                    .take(k)
                    .take_while(|r| r.0 <= cutoff)
                    .count()
                    .max(1);
                picks.clear();
                picks.extend(ranked[..used].iter().map(|&(_, c)| at(c, t, h)));
                if let Some(rec) = record {
                    rec.extend(ranked[..used].iter().map(|&(_, c)| cands[c]));
                }
                Some(clip(median(&picks, &mut Vec::new())))
            };
            let keep = self.calibration + self.aci_replay;
            let mut errs = Vec::with_capacity(keep);
            for t in (t0..=n.saturating_sub(h)).rev() {
                if errs.len() >= keep {
                    break;
                }
                match policy_at(t, None) {
                    Some(f) => errs.push((y[t + h - 1] - f) / vol[t - t0]),
                    None => break,
                }
            }
            if errs.len() < self.min_calibration {
                return Err(ForecastError::TooShort {
                    model: NAME,
                    needed: needed + self.min_calibration - errs.len(),
                    got: n,
                });
            }
            let mut rec = Vec::with_capacity(k);
            let f = policy_at(n, Some(&mut rec)).ok_or(ForecastError::TooShort {
                model: NAME,
                needed,
                got: n,
            })?;
            errs.reverse();
            point.push(f);
            chosen.push(rec);
            errors.push(errs);
        }
        Ok(FittedAdaptive {
            point,
            chosen,
            errors,
            calibration: self.calibration.max(1),
            aci_replay: self.aci_replay,
            aci_gamma: self.aci_gamma,
            scale_now: vol[n - t0],
            clip_at_zero,
            period,
            short_period: short,
        })
    }
}

impl FittedAdaptive {
    /// The interval offsets at 0-based step `h` for `level`: the conformal quantiles of the
    /// newest `calibration` errors, at a level recalibrated by replaying adaptive conformal
    /// inference (Gibbs & Candès 2021) over the older errors: at each replayed origin the
    /// interval is built only from errors whose targets were observed by then, and the
    /// miscoverage rate moves by `gamma · (alpha − missed)`, so a series whose recent
    /// intervals covered too often gets narrower ones and one that missed gets wider ones.
    fn offsets(&self, h: usize, level: f64) -> (f64, f64) {
        aci_offsets(
            &self.errors[h],
            self.calibration,
            self.aci_replay,
            self.aci_gamma,
            h + 1,
            level,
        )
    }

    /// The policy's recent out-of-sample errors (`actual − forecast`) at step `h`
    /// (1-based), oldest first; the last is the error of the forecast made `h` samples before
    /// the end of the history for its last sample. In the series' unit when `local_scale` is 0
    /// (the default).
    pub fn recent_errors(&self, h: usize) -> &[f64] {
        self.errors
            .get(h.wrapping_sub(1))
            .map_or(&[], Vec::as_slice)
    }
}

/// Interval offsets (added to the point forecast) at `level` for a forecast `lag` steps
/// ahead, from that step's recent errors `e` (oldest first): the conformal quantiles of the
/// newest `calibration` errors at a level recalibrated by replaying adaptive conformal
/// inference (Gibbs & Candès 2021) over the older ones: at each replayed origin the interval
/// is built only from errors whose targets were observed by then (`lag` origins earlier), and
/// the miscoverage rate moves by `gamma · alpha0 · (alpha0 − missed)`, so a series whose recent
/// intervals covered too often gets narrower ones and one that missed gets wider ones.
pub(crate) fn aci_offsets(
    e: &[f64],
    calibration: usize,
    aci_replay: usize,
    aci_gamma: f64,
    lag: usize,
    level: f64,
) -> (f64, f64) {
    let n = e.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let lag = lag.max(1);
    // A short history splits its errors: up to half replayed, the rest calibrate.
    let q = calibration.min(n - (n / 2).min(aci_replay)).max(1);
    let alpha0 = 1.0 - level;
    let mut alpha = alpha0;
    // The step is relative to the nominal miscoverage, so a 95% interval (misses rare)
    // moves as cautiously, in relative terms, as an 80% one.
    let gamma = aci_gamma * alpha0;
    // Replayed origins j (index into e): those with a full window of errors before
    // them; at origin j the errors known are e[..=j - lag].
    let first = q + lag - 1;
    if aci_gamma > 0.0 && n > first + 1 {
        let mut window: Vec<f64> = e[first + 1 - lag - q..first + 1 - lag].to_vec();
        sort_floats(&mut window);
        for j in first..n {
            let (lo, hi) = conformal_offsets(&window, (1.0 - alpha).clamp(0.0, 1.0));
            let missed = if lo <= e[j] && e[j] <= hi { 0.0 } else { 1.0 };
            alpha = (alpha + gamma * (alpha0 - missed)).clamp(0.0, 1.0);
            // Slide: e[j + 1 - lag] becomes known, e[j + 1 - lag - q] drops out.
            if j + 1 < n {
                let add = e[j + 1 - lag];
                let drop = e[j + 1 - lag - q];
                if let Ok(i) = window.binary_search_by(|x| x.total_cmp(&drop)) {
                    window.remove(i);
                }
                let i = window.partition_point(|x| x.total_cmp(&add).is_lt());
                window.insert(i, add);
            }
        }
    }
    let mut last: Vec<f64> = e[n.saturating_sub(q)..].to_vec();
    sort_floats(&mut last);
    conformal_offsets(&last, (1.0 - alpha).clamp(0.0, 1.0))
}

impl Fitted for FittedAdaptive {
    fn predict(&self, horizon: usize, levels: &[f64]) -> Result<Forecast, ForecastError> {
        check_request(horizon, levels)?;
        if horizon > self.point.len() {
            return Err(ForecastError::HorizonBeyondFit {
                model: NAME,
                requested: horizon,
                fitted: self.point.len(),
            });
        }
        let clip = |v: f64| if self.clip_at_zero { v.max(0.0) } else { v };
        let point = self.point[..horizon].to_vec();
        let intervals = levels
            .iter()
            .map(|&level| {
                let (lower, upper) = (0..horizon)
                    .map(|h| {
                        // The interval always holds its point: when the recent errors all
                        // lie on one side (a biased stretch), the conformal offsets share a
                        // sign, and a band that excludes the point would contradict it.
                        let (lo, hi) = self.offsets(h, level);
                        let (lo, hi) = (lo.min(0.0) * self.scale_now, hi.max(0.0) * self.scale_now);
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
        Ok(Forecast { point, intervals })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::test_noise as noise;

    #[test]
    fn intervals_hold_their_point_after_a_one_sided_stretch() {
        // A level that falls steadily for the whole calibration window: every recent error
        // is negative (the forecasts were too high), so both conformal offsets are negative.
        let mut y: Vec<f64> = (0..400).map(|i| 50.0 + 5.0 * noise(i)).collect();
        y.extend((0..176).map(|i| 50.0 - 0.25 * i as f64));
        let fitted = Adaptive::default().fit(&y).unwrap();
        let f = fitted.predict(12, &[0.8, 0.95]).unwrap();
        for i in &f.intervals {
            for h in 0..12 {
                assert!(
                    i.lower[h] <= f.point[h] && f.point[h] <= i.upper[h],
                    "level {} step {h}: {} not in [{}, {}]",
                    i.level,
                    f.point[h],
                    i.lower[h],
                    i.upper[h]
                );
            }
        }
    }

    #[test]
    fn flat_noise_prefers_smoothing_and_covers() {
        // White noise around 50: averaging candidates beat the last value.
        let y: Vec<f64> = (0..576).map(|i| 50.0 + 10.0 * noise(i)).collect();
        let fitted = Adaptive::default().fit(&y).unwrap();
        assert!(fitted.period().is_none());
        for h in 1..=12 {
            let c = fitted.chosen(h);
            assert_ne!(c[0], "last", "step {h}: {c:?}");
        }
        let f = fitted.predict(12, &[0.8, 0.95]).unwrap();
        assert!(
            (f.point[0] - 50.0).abs() < 3.0,
            "{:?} {:?}",
            f.point,
            fitted.chosen(1)
        );
        // Uniform noise of width 10: the 80% interval is about ±4, the 95% about ±4.75.
        let i80 = f.interval(0.8).unwrap();
        let w80 = i80.upper[0] - i80.lower[0];
        assert!((6.0..10.5).contains(&w80), "80% width {w80}");
    }

    #[test]
    fn seasonal_series_uses_the_season() {
        let p = 48;
        let y: Vec<f64> = (0..576)
            .map(|i| 100.0 + 40.0 * (i as f64 * std::f64::consts::TAU / p as f64).sin() + noise(i))
            .collect();
        let fitted = Adaptive::default().fit(&y).unwrap();
        assert_eq!(fitted.period(), Some(p));
        // Seasonal naive or the per-phase median over the last cycles (less noisy).
        assert!(
            fitted.chosen(12)[0].starts_with("snaive")
                || fitted.chosen(12)[0].starts_with("smedian48x"),
            "{:?}",
            fitted.chosen(12)
        );
        let f = fitted.predict(12, &[]).unwrap();
        for (h, v) in f.point.iter().enumerate() {
            let truth = 100.0 + 40.0 * ((576 + h) as f64 * std::f64::consts::TAU / p as f64).sin();
            assert!((v - truth).abs() < 3.0, "h {}: {v} vs {truth}", h + 1);
        }
    }

    #[test]
    fn a_level_with_one_sided_spikes_uses_a_long_median() {
        // A level of 100 with small noise and, at one sample in four, a spike of +60 (a
        // batch job): the last value and smoothing chase the spikes; the weighted medians of
        // the long history stay on the level.
        let y: Vec<f64> = (0..576)
            .map(|i| 100.0 + 2.0 * noise(i) + if noise(7 * i + 3) > 0.5 { 60.0 } else { 0.0 })
            .collect();
        let fitted = Adaptive {
            // Only the candidates this test is about, besides the last value.
            ses_alphas: vec![0.5],
            median_windows: vec![3],
            ..Adaptive::default()
        }
        .fit(&y)
        .unwrap();
        for h in [1, 6, 12] {
            let c = fitted.chosen(h);
            assert!(c[0].starts_with("wmedian"), "step {h}: {c:?}");
        }
        let f = fitted.predict(12, &[]).unwrap();
        assert!((f.point[0] - 100.0).abs() < 2.0, "{:?}", f.point);
    }

    #[test]
    fn an_idle_series_ignores_a_lone_spike() {
        // Idle (exactly 0) since long before the selection window, then a lone spike as the
        // last sample: every candidate forecast 0 before it, so all have the same recent
        // error, and the tie goes to those a single sample does not move (the last value
        // and smoothing would put 100, 50, 25 or 10 into the combination).
        let y: Vec<f64> = (0..576)
            .map(|i| if i == 100 || i == 575 { 100.0 } else { 0.0 })
            .collect();
        let fitted = Adaptive::default().fit(&y).unwrap();
        let f = fitted.predict(12, &[]).unwrap();
        assert!(
            f.point.iter().all(|&v| v < 1.0),
            "{:?} {:?}",
            f.point,
            fitted.chosen(1)
        );
    }

    /// Mean absolute error over rolling origins (every 12 samples from 576), horizons 1-12,
    /// of `forecast(history) -> 12 points`.
    fn rolling_mae(y: &[f64], forecast: impl Fn(&[f64]) -> Vec<f64>) -> f64 {
        let (mut sum, mut n) = (0.0, 0usize);
        for t in (576..y.len() - 12).step_by(12) {
            for (h, v) in forecast(&y[t - 576..t]).iter().enumerate() {
                sum += (y[t + h] - v).abs();
                n += 1;
            }
        }
        sum / n as f64
    }

    #[test]
    fn periodic_bursts_on_an_idle_series_are_forecast_from_their_season() {
        // Idle at 0, with a burst of 12 noisy samples every 100 (a job on an otherwise idle
        // VM). The season forecasts the bursts; the last value chases them and the idle
        // level misses them. A ranking that discounts large errors (tried: each error capped
        // at a multiple of the typical one-step change, which helped on the public traces)
        // loses exactly this advantage: it scored 0.86 here against 0.35.
        let y: Vec<f64> = (0..1800)
            .map(|i| {
                if i % 100 >= 60 && i % 100 < 72 {
                    15.0 + 10.0 * noise(i)
                } else {
                    0.0
                }
            })
            .collect();
        let policy = rolling_mae(&y, |h| {
            Adaptive::default()
                .fit(h)
                .unwrap()
                .predict(12, &[])
                .unwrap()
                .point
        });
        let last = rolling_mae(&y, |h| vec![h[h.len() - 1]; 12]);
        let idle = rolling_mae(&y, |_| vec![0.0; 12]);
        eprintln!("MAE policy {policy:.3}, last value {last:.3}, idle {idle:.3}");
        assert!(
            policy < 0.3 * last.min(idle),
            "MAE policy {policy:.3}, last value {last:.3}, idle {idle:.3}"
        );
    }

    #[test]
    fn a_short_season_under_a_daily_one_uses_per_phase_medians() {
        // A daily wave (dominant) plus a spike in the first two samples of every hour (12
        // samples), with noise: the hourly phase is forecast from the medians of the same
        // phase over the last few hours.
        let y: Vec<f64> = (0..576)
            .map(|i| {
                100.0
                    + 50.0 * (i as f64 * std::f64::consts::TAU / 288.0).sin()
                    + if i % 12 < 2 { 40.0 } else { 0.0 }
                    + 6.0 * noise(i)
            })
            .collect();
        let fitted = Adaptive::default().fit(&y).unwrap();
        assert_eq!(fitted.short_period(), Some(12), "{:?}", fitted.period());
        // Step h forecasts sample 576 + h - 1; phases 0 and 1 of the hour are the spikes.
        let f = fitted.predict(12, &[]).unwrap();
        for (h, v) in f.point.iter().enumerate() {
            let i = 576 + h;
            let truth = 100.0
                + 50.0 * (i as f64 * std::f64::consts::TAU / 288.0).sin()
                + if i % 12 < 2 { 40.0 } else { 0.0 };
            assert!((v - truth).abs() < 12.0, "step {}: {v} vs {truth}", h + 1);
        }
    }

    #[test]
    fn recalibration_follows_a_calmer_regime() {
        // Noise of amplitude 20 that calms down to amplitude 2 for the last 200 samples: the
        // plain conformal interval still mixes in loud errors; the replayed recalibration
        // sees its intervals cover every calm sample and narrows them.
        let y: Vec<f64> = (0..576)
            .map(|i| 50.0 + if i < 376 { 20.0 } else { 2.0 } * noise(i))
            .collect();
        let plain = Adaptive {
            aci_gamma: 0.0,
            ..Adaptive::default()
        };
        let width = |p: &Adaptive| {
            let f = p.fit(&y).unwrap().predict(1, &[0.8]).unwrap();
            f.intervals[0].upper[0] - f.intervals[0].lower[0]
        };
        let (w_plain, w_aci) = (width(&plain), width(&Adaptive::default()));
        assert!(
            w_aci < 0.8 * w_plain,
            "recalibrated {w_aci} vs plain {w_plain}"
        );
        // Uniform noise of width 2 (plus the forecast's own error): 80% is about 1.6 wide.
        assert!(
            w_aci > 1.0,
            "recalibrated width {w_aci} below the noise's own spread"
        );
    }

    #[test]
    fn min_history_is_enough() {
        let y: Vec<f64> = (0..1000).map(|i| 10.0 + noise(i)).collect();
        for h in [1, 6, 12, 48] {
            let p = Adaptive::with_horizon(h);
            let n = p.min_history();
            p.fit(&y[..n])
                .unwrap_or_else(|e| panic!("horizon {h}, {n} samples: {e}"));
        }
    }

    #[test]
    fn errors_are_reported() {
        let short = vec![1.0; 50];
        assert!(matches!(
            Adaptive::default().fit(&short),
            Err(ForecastError::TooShort { .. })
        ));
        let y: Vec<f64> = (0..400).map(noise).collect();
        let fitted = Adaptive::with_horizon(6).fit(&y).unwrap();
        assert!(matches!(
            fitted.predict(7, &[0.8]),
            Err(ForecastError::HorizonBeyondFit {
                requested: 7,
                fitted: 6,
                ..
            })
        ));
        assert!(fitted.calibration_size(6) >= 20);
    }
}
