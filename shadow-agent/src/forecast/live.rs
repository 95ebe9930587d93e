//! Live forecasting in `shadow-agent run`: every tracked cgroup's CPU series from the
//! profiler, refitted on a schedule with a bounded number of fits per interval, published in
//! the status file (for `shadow-agent forecast --cgroup`) and as
//! `shadow_forecast_upper_bound`.
//!
//! Samples arrive once per profiler interval; `step_intervals` of them are averaged into one
//! forecast step (60 one-second intervals: one-minute steps). A series is due for a refit
//! when `refit_every` new steps have arrived and it has the policy's minimum history; each
//! interval at most `max_refits_per_interval` due series are refitted, longest-waiting first,
//! so a node with many series spreads the work instead of spiking. The CPU time spent in fits
//! is measured (thread CPU time) and published.
//!
//! When the run has a mirror and a shadow group, the mirror's matched packets per step are
//! the primary's load signal, the replicas' summed CPU against the clones per step is the
//! shadow's cost per packet ([`super::demand`]), and each tracked cgroup's published CPU
//! forecast is the better of the direct and the shadow-derived one on recent targets, with the
//! reason. Memory likewise, per concurrent flow: the replicas' summed memory against their
//! established connections is the shadow's memory per flow, and a cgroup's memory forecast
//! may be derived from the forecast of its own established connections on the mirrored ports.

use std::collections::{BTreeMap, VecDeque};

use serde::Deserialize;

use super::{
    demand::{self, CostModel, Source},
    policy::{Adaptive, FittedAdaptive},
    thread_cpu_ns, Fitted as _, Forecaster as _,
};

/// The `[forecast]` section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForecast {
    enabled: Option<bool>,
    step_intervals: Option<u32>,
    window: Option<usize>,
    horizon: Option<usize>,
    refit_every: Option<usize>,
    max_refits_per_interval: Option<usize>,
    levels: Option<Vec<f64>>,
    history_file: Option<std::path::PathBuf>,
}

/// The validated `[forecast]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveSpec {
    pub enabled: bool,
    /// Profiler intervals averaged into one forecast step.
    pub step_intervals: u32,
    /// Steps kept and fitted on.
    pub window: usize,
    /// Steps forecast.
    pub horizon: usize,
    /// New steps between refits of a series.
    pub refit_every: usize,
    /// Fits per profiler interval at most (all series together).
    pub max_refits_per_interval: usize,
    /// Interval levels, fractions in (0, 1).
    pub levels: Vec<f64>,
    /// Where the series' history is kept across restarts (None: not kept). Written once per
    /// step and at exit, read at start: an agent restarted (an upgrade, a config change that
    /// needs a restart) forecasts at once instead of warming up for `window` steps again.
    pub history_file: Option<std::path::PathBuf>,
}

impl Default for LiveSpec {
    fn default() -> Self {
        LiveSpec {
            enabled: true,
            step_intervals: 60,
            window: 576,
            horizon: 12,
            refit_every: 1,
            max_refits_per_interval: 8,
            levels: vec![0.8, 0.95],
            history_file: None,
        }
    }
}

impl RawForecast {
    /// Validates the section; errors are `(key path, message)`.
    pub fn validate(self) -> Result<LiveSpec, (String, String)> {
        let d = LiveSpec::default();
        let bad = |k: &str, m: String| (format!("forecast.{k}"), m);
        let spec = LiveSpec {
            enabled: self.enabled.unwrap_or(d.enabled),
            step_intervals: self.step_intervals.unwrap_or(d.step_intervals),
            window: self.window.unwrap_or(d.window),
            horizon: self.horizon.unwrap_or(d.horizon),
            refit_every: self.refit_every.unwrap_or(d.refit_every),
            max_refits_per_interval: self
                .max_refits_per_interval
                .unwrap_or(d.max_refits_per_interval),
            levels: match self.levels {
                None => d.levels,
                Some(l) => l.iter().map(|p| p / 100.0).collect(),
            },
            history_file: self.history_file.filter(|p| !p.as_os_str().is_empty()),
        };
        if let Some(p) = spec.history_file.as_ref().filter(|p| !p.is_absolute()) {
            return Err(bad(
                "history_file",
                format!("{} is not an absolute path", p.display()),
            ));
        }
        if spec.step_intervals == 0 {
            return Err(bad("step_intervals", "must be at least 1".into()));
        }
        if !(1..=288).contains(&spec.horizon) {
            return Err(bad(
                "horizon",
                format!("{} is not between 1 and 288 steps", spec.horizon),
            ));
        }
        let needed = Adaptive::with_horizon(spec.horizon).min_history();
        if spec.window < needed || spec.window > 100_000 {
            return Err(bad(
                "window",
                format!(
                    "{} steps: the default policy needs {needed} to {} for horizon {}",
                    spec.window, 100_000, spec.horizon
                ),
            ));
        }
        if spec.refit_every == 0 {
            return Err(bad("refit_every", "must be at least 1 step".into()));
        }
        if spec.max_refits_per_interval == 0 {
            return Err(bad("max_refits_per_interval", "must be at least 1".into()));
        }
        if spec.levels.is_empty() || spec.levels.len() > 4 {
            return Err(bad("levels", "give 1 to 4 levels in percent".into()));
        }
        if let Some(l) = spec.levels.iter().find(|l| !(**l > 0.0 && **l < 1.0)) {
            return Err(bad(
                "levels",
                format!("{} is not a percentage in (0, 100)", l * 100.0),
            ));
        }
        Ok(spec)
    }
}

impl LiveSpec {
    /// The levels as published (percent, rounded to hundredths as in [`PublishedInterval`]).
    pub fn published_levels(&self) -> Vec<f64> {
        self.levels
            .iter()
            .map(|l| (l * 1e4).round() / 100.0)
            .collect()
    }
}

/// One interval of a published forecast.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PublishedInterval {
    /// Percent, e.g. 80.
    pub level: f64,
    pub lower: Vec<f64>,
    pub upper: Vec<f64>,
}

/// A series' latest forecast as published in the status file.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Published {
    pub metric: String,
    pub unit: String,
    /// Seconds per step.
    pub step_s: f64,
    /// Steps of history the fit used.
    pub samples: usize,
    /// Wall clock of the fit (Unix seconds).
    pub fitted_unix_s: f64,
    pub point: Vec<f64>,
    pub intervals: Vec<PublishedInterval>,
    /// "direct" or "shadow_derived".
    pub source: String,
    /// Why that source.
    pub reason: String,
    /// The season the policy found, in steps.
    pub period: Option<usize>,
}

#[derive(Debug, Default)]
struct Track {
    /// What the series measures (`cpu`, `memory`), published with its forecasts.
    metric: String,
    unit: String,
    acc: f64,
    acc_n: u32,
    history: VecDeque<f64>,
    new_steps: usize,
    /// Interval at which the series became due (for fairness).
    due_since: Option<u64>,
    latest: Option<Published>,
}

/// A shadow cost signal, per step: the shadow's resource (`shadow_cost`) against its load.
#[derive(Debug, Default)]
struct ShadowSignals {
    /// The primary's load, when one load serves every series of the resource (CPU: the
    /// mirror's packets); `None` when each series has its own ([`LiveForecaster::memory_load`]).
    primary_load: Option<String>,
    shadow_load: String,
    shadow_cost: String,
    cost: Option<CostModel>,
    /// The interval `cost` was fitted at: the line is shared by every series of the
    /// resource, so it is fitted once per interval, not once per series refit.
    fitted_at: Option<u64>,
}

/// Format version of the history file.
const HISTORY_VERSION: u32 = 1;

/// The history file ([`LiveSpec::history_file`]): every series' whole steps, with the step
/// length and when it was written.
#[derive(Debug, serde::Serialize, Deserialize)]
struct HistoryFile {
    version: u32,
    step_s: f64,
    saved_unix_s: f64,
    series: BTreeMap<String, Vec<f64>>,
}

/// What a restore found ([`LiveForecaster::restore`]), for the log and the status.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Restored {
    /// The file read.
    pub file: String,
    /// Series in the file.
    pub series: usize,
    /// Series taken up so far (tracked now, or since).
    pub taken: usize,
    /// Whole steps between the file's writing and the restore, each filled with the
    /// series' last value.
    pub gap_steps: usize,
    /// Why nothing was restored (a step length that changed, a gap too long).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discarded: Option<String>,
}

/// Fills an empty `history` from a saved one: its finite values, then `gap` copies of its
/// last value (the steps missed since it was saved), keeping the newest `window`. The
/// restored forecast history here and the allocator's usage history share it.
pub(crate) fn seed_history(
    history: &mut std::collections::VecDeque<f64>,
    saved: &[f64],
    gap: usize,
    window: usize,
) {
    let Some(&last) = saved.last() else {
        return;
    };
    history.extend(
        saved
            .iter()
            .copied()
            .chain(std::iter::repeat_n(last, gap.min(window)))
            .filter(|v| v.is_finite()),
    );
    while history.len() > window {
        history.pop_front();
    }
}

fn unix_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The live forecaster of one agent run.
pub struct LiveForecaster {
    spec: LiveSpec,
    policy: Adaptive,
    step_s: f64,
    tracks: BTreeMap<String, Track>,
    /// Keys of series that are forecast and published (the others are signals only).
    published: Vec<String>,
    /// CPU per packet.
    shadow: Option<ShadowSignals>,
    /// Memory per concurrent flow; each memory series has its own load key.
    shadow_memory: Option<ShadowSignals>,
    /// Memory series key → the key of that cgroup's concurrent flows.
    memory_loads: BTreeMap<String, String>,
    /// Per load key, the interval its policy was last fitted at and the fit.
    load_fits: BTreeMap<String, (u64, FittedAdaptive)>,
    interval: u64,
    fits: u64,
    fit_cpu_ns: u128,
    started: std::time::Instant,
    /// Series read from the history file and not taken up yet: (history, written at).
    pending: BTreeMap<String, Vec<f64>>,
    pending_saved_s: f64,
    restored: Option<Restored>,
    /// When the history file was last written (wall clock, seconds).
    saved_s: Option<f64>,
}

impl LiveForecaster {
    /// A forecaster for samples arriving every `interval_s` seconds.
    pub fn new(spec: LiveSpec, interval_s: f64) -> Self {
        LiveForecaster {
            policy: Adaptive::with_horizon(spec.horizon),
            step_s: interval_s * f64::from(spec.step_intervals),
            spec,
            tracks: BTreeMap::new(),
            published: Vec::new(),
            shadow: None,
            shadow_memory: None,
            memory_loads: BTreeMap::new(),
            load_fits: BTreeMap::new(),
            interval: 0,
            fits: 0,
            fit_cpu_ns: 0,
            started: std::time::Instant::now(),
            pending: BTreeMap::new(),
            pending_saved_s: 0.0,
            restored: None,
            saved_s: None,
        }
    }

    /// The longest gap (in steps) a restored history may have: beyond it the series are
    /// started afresh (a day-old history filled with a last value would mislead more than
    /// it helps).
    pub fn max_gap_steps(&self) -> usize {
        (self.spec.window / 8).max(self.spec.horizon)
    }

    /// Writes every series' whole steps to `path` (atomically: a temporary file, fsync,
    /// rename).
    pub fn save(&mut self, path: &std::path::Path) -> std::io::Result<()> {
        let now = unix_s();
        let file = HistoryFile {
            version: HISTORY_VERSION,
            step_s: self.step_s,
            saved_unix_s: now,
            series: self
                .tracks
                .iter()
                .filter(|(_, t)| !t.history.is_empty())
                .map(|(k, t)| (k.clone(), t.history.iter().copied().collect()))
                .collect(),
        };
        let text = serde_json::to_vec(&file).map_err(std::io::Error::other)?;
        crate::sys::write_atomic(path, &text).map_err(|(op, p, e)| {
            std::io::Error::new(e.kind(), format!("{op} {}: {e}", p.display()))
        })?;
        self.saved_s = Some(now);
        Ok(())
    }

    /// Writes the history file if it is configured and a step has passed since the last
    /// write; an error is returned for the caller to log (the run goes on without).
    pub fn save_due(&mut self) -> Option<std::io::Result<()>> {
        let path = self.spec.history_file.clone()?;
        let now = unix_s();
        if self.saved_s.is_some_and(|t| now - t < self.step_s) {
            return None;
        }
        Some(self.save(&path))
    }

    /// Reads the history `path` holds: each series tracked now (or later, by
    /// [`Self::track_metric`]) gets it, with every whole step since the file was written
    /// filled with its last value, and is due for a refit. Nothing is taken when the file's
    /// step length is not this run's or its gap exceeds [`Self::max_gap_steps`] (said in
    /// [`Restored::discarded`]). A missing file is `Ok(None)`; an unreadable one an error.
    pub fn restore(&mut self, path: &std::path::Path) -> Result<Option<Restored>, String> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("reading {}: {e}", path.display())),
        };
        let file: HistoryFile = serde_json::from_slice(&text)
            .map_err(|e| format!("parsing {}: {e}", path.display()))?;
        let mut r = Restored {
            file: path.display().to_string(),
            series: file.series.len(),
            ..Restored::default()
        };
        let gap = ((unix_s() - file.saved_unix_s) / self.step_s).max(0.0);
        r.gap_steps = gap.floor() as usize;
        if file.version != HISTORY_VERSION {
            r.discarded = Some(format!(
                "format version {}, not {HISTORY_VERSION}",
                file.version
            ));
        } else if (file.step_s - self.step_s).abs() > 1e-6 * self.step_s {
            r.discarded = Some(format!(
                "steps of {} s, this run's are {} s",
                file.step_s, self.step_s
            ));
        } else if r.gap_steps > self.max_gap_steps() {
            r.discarded = Some(format!(
                "written {} steps ago, more than {}",
                r.gap_steps,
                self.max_gap_steps()
            ));
        }
        let usable = r.discarded.is_none();
        self.restored = Some(r);
        if usable {
            self.pending = file.series;
            self.pending_saved_s = file.saved_unix_s;
            let keys: Vec<String> = self.tracks.keys().cloned().collect();
            for k in keys {
                self.take_pending(&k);
            }
        }
        Ok(self.restored.clone())
    }

    /// Gives `key` its restored history, if the file had one and it is not too old now.
    fn take_pending(&mut self, key: &str) {
        let Some(steps) = self.pending.remove(key) else {
            return;
        };
        let gap = ((unix_s() - self.pending_saved_s) / self.step_s)
            .max(0.0)
            .floor() as usize;
        if gap > self.max_gap_steps() || steps.is_empty() {
            return;
        }
        let window = self.spec.window;
        let refit_every = self.spec.refit_every;
        let Some(t) = self.tracks.get_mut(key) else {
            return;
        };
        if !t.history.is_empty() {
            return;
        }
        seed_history(&mut t.history, &steps, gap, window);
        t.new_steps = t.new_steps.max(refit_every);
        if let Some(r) = self.restored.as_mut() {
            r.taken += 1;
        }
    }

    /// Forecast and publish the CPU series `key` (e.g. a cgroup path) in `unit`.
    pub fn track(&mut self, key: &str, unit: &str) {
        self.track_metric(key, "cpu", unit);
    }

    /// Forecast and publish series `key` of `metric` in `unit`. `cpu` series are offered the
    /// shadow-derived alternative once [`Self::use_shadow`] is called, `memory` series once
    /// [`Self::use_shadow_memory`] is and their flows are given ([`Self::memory_load`]).
    pub fn track_metric(&mut self, key: &str, metric: &str, unit: &str) {
        let t = self.tracks.entry(key.to_owned()).or_default();
        t.metric = metric.to_owned();
        t.unit = unit.to_owned();
        if !self.published.iter().any(|k| k == key) {
            self.published.push(key.to_owned());
        }
        self.take_pending(key);
    }

    /// Learn the shadow's cost from `shadow_cpu` against `shadow_load`, and offer the
    /// published series a forecast derived from `primary_load` (all three are keys fed by
    /// [`LiveForecaster::observe`]).
    pub fn use_shadow(&mut self, primary_load: &str, shadow_load: &str, shadow_cpu: &str) {
        for (k, unit) in [
            (primary_load, "packets/s"),
            (shadow_load, "packets/s"),
            (shadow_cpu, "cores"),
        ] {
            self.tracks.entry(k.to_owned()).or_default().unit = unit.to_owned();
        }
        self.shadow = Some(ShadowSignals {
            primary_load: Some(primary_load.to_owned()),
            shadow_load: shadow_load.to_owned(),
            shadow_cost: shadow_cpu.to_owned(),
            ..ShadowSignals::default()
        });
    }

    /// Learn the shadow's memory per concurrent flow from `shadow_memory` (bytes) against
    /// `shadow_flows` (established connections), for the memory series given a load by
    /// [`Self::memory_load`].
    pub fn use_shadow_memory(&mut self, shadow_flows: &str, shadow_memory: &str) {
        for (k, unit) in [(shadow_flows, "flows"), (shadow_memory, "bytes")] {
            self.tracks.entry(k.to_owned()).or_default().unit = unit.to_owned();
        }
        self.shadow_memory = Some(ShadowSignals {
            primary_load: None,
            shadow_load: shadow_flows.to_owned(),
            shadow_cost: shadow_memory.to_owned(),
            ..ShadowSignals::default()
        });
    }

    /// The concurrent flows of the cgroup whose memory series is `memory_key` arrive as
    /// `flows_key` (fed by [`Self::observe`]).
    pub fn memory_load(&mut self, memory_key: &str, flows_key: &str) {
        self.tracks.entry(flows_key.to_owned()).or_default().unit = "flows".into();
        self.memory_loads
            .insert(memory_key.to_owned(), flows_key.to_owned());
        self.take_pending(flows_key);
    }

    /// Stop forecasting series `key` and forget its history, its forecasts and its own load
    /// signal (a profiled cgroup taken out by a reload).
    pub fn untrack(&mut self, key: &str) {
        self.tracks.remove(key);
        self.published.retain(|k| k != key);
        if let Some(load) = self.memory_loads.remove(key) {
            self.tracks.remove(&load);
            self.load_fits.remove(&load);
        }
    }

    /// Seed the history of `key` with whole steps (oldest first), e.g. from a recorded trace;
    /// only the last `window` are kept. The series is due for a refit at the next interval.
    pub fn preload(&mut self, key: &str, steps: &[f64]) {
        let window = self.spec.window;
        let Some(t) = self.tracks.get_mut(key) else {
            return;
        };
        t.history
            .extend(steps.iter().copied().filter(|v| v.is_finite()));
        while t.history.len() > window {
            t.history.pop_front();
        }
        t.new_steps = t.new_steps.max(self.spec.refit_every);
    }

    /// One profiler interval's sample of `key`.
    pub fn observe(&mut self, key: &str, value: f64) {
        let Some(t) = self.tracks.get_mut(key) else {
            return;
        };
        if !value.is_finite() {
            return;
        }
        t.acc += value;
        t.acc_n += 1;
        if t.acc_n >= self.spec.step_intervals {
            t.history.push_back(t.acc / f64::from(t.acc_n));
            t.acc = 0.0;
            t.acc_n = 0;
            if t.history.len() > self.spec.window {
                t.history.pop_front();
            }
            t.new_steps += 1;
        }
    }

    /// End of an interval: refit at most `max_refits_per_interval` due series.
    pub fn refit_due(&mut self) {
        self.interval += 1;
        let need = self.policy.min_history();
        let now = self.interval;
        let mut due: Vec<(u64, String)> = Vec::new();
        for key in &self.published {
            let Some(t) = self.tracks.get_mut(key) else {
                continue;
            };
            if t.history.len() >= need && t.new_steps >= self.spec.refit_every {
                due.push((*t.due_since.get_or_insert(now), key.clone()));
            }
        }
        due.sort();
        for (_, key) in due.into_iter().take(self.spec.max_refits_per_interval) {
            let start = thread_cpu_ns();
            self.refit(&key);
            self.fit_cpu_ns += thread_cpu_ns().saturating_sub(start);
            self.fits += 1;
            if let Some(t) = self.tracks.get_mut(&key) {
                t.new_steps = 0;
                t.due_since = None;
            }
        }
    }

    fn history(&self, key: &str) -> Vec<f64> {
        self.tracks
            .get(key)
            .map(|t| t.history.iter().copied().collect())
            .unwrap_or_default()
    }

    fn refit(&mut self, key: &str) {
        let y = self.history(key);
        let levels = self.spec.levels.clone();
        let direct = match self.policy.fit(&y) {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(series = key, error = %e, "forecast fit failed");
                return;
            }
        };
        let metric = self
            .tracks
            .get(key)
            .map(|t| t.metric.clone())
            .unwrap_or_default();
        let derived = self.derived(key, &metric, &y, &direct);
        let (forecast, source, reason) = match derived {
            Some(Ok(c)) => {
                let src = match c.source {
                    Source::Direct => "direct",
                    Source::ShadowDerived => "shadow_derived",
                };
                (c.forecast, src, c.reason)
            }
            other => {
                let why = match other {
                    Some(Err(e)) => format!("direct: shadow-derived unavailable ({e})"),
                    _ => self.no_shadow_reason(key, &metric),
                };
                match direct.predict(self.spec.horizon, &levels) {
                    Ok(f) => (f, "direct", why),
                    Err(e) => {
                        tracing::debug!(series = key, error = %e, "forecast failed");
                        return;
                    }
                }
            }
        };
        let fitted_unix_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let step_s = self.step_s;
        let Some(t) = self.tracks.get_mut(key) else {
            return;
        };
        t.latest = Some(Published {
            metric: t.metric.clone(),
            unit: t.unit.clone(),
            step_s,
            samples: y.len(),
            fitted_unix_s,
            point: forecast.point,
            intervals: forecast
                .intervals
                .into_iter()
                .map(|i| PublishedInterval {
                    level: (i.level * 1e4).round() / 100.0,
                    lower: i.lower,
                    upper: i.upper,
                })
                .collect(),
            source: source.into(),
            reason,
            period: direct.period(),
        });
    }

    /// The shadow cost signals of `metric`'s series, if the run has them.
    fn signals(&self, metric: &str) -> Option<&ShadowSignals> {
        match metric {
            "cpu" => self.shadow.as_ref(),
            "memory" => self.shadow_memory.as_ref(),
            _ => None,
        }
    }

    fn signals_mut(&mut self, metric: &str) -> Option<&mut ShadowSignals> {
        match metric {
            "cpu" => self.shadow.as_mut(),
            "memory" => self.shadow_memory.as_mut(),
            _ => None,
        }
    }

    fn no_shadow_reason(&self, key: &str, metric: &str) -> String {
        let unit = match metric {
            "cpu" => "CPU per packet",
            "memory" => "memory per flow",
            _ => return format!("direct: the shadow has no cost model for {metric}"),
        };
        let signals = self.signals(metric);
        match signals {
            None if metric == "memory" && self.shadow.is_some() => {
                "direct: the shadow's memory per flow is not measured (no TCP mirror rule)".into()
            }
            None => "direct: the run has no mirror and shadow group".into(),
            Some(_) if metric == "memory" && !self.memory_loads.contains_key(key) => {
                "direct: this cgroup's concurrent flows are not counted".into()
            }
            Some(s) if s.cost.is_none() => {
                format!("direct: the shadow's {unit} is not learned yet (needs varying load)")
            }
            Some(_) => "direct: not enough load history for the shadow-derived forecast".into(),
        }
    }

    /// The shadow-derived alternative for the primary series `key` of `metric` (history `y`),
    /// if the run has one: CPU from the mirror's packets, memory from the cgroup's flows.
    fn derived(
        &mut self,
        key: &str,
        metric: &str,
        y: &[f64],
        direct: &FittedAdaptive,
    ) -> Option<Result<demand::Choice, super::ForecastError>> {
        let s = self.signals(metric)?;
        let primary_load = match &s.primary_load {
            Some(load) => load.clone(),
            None => self.memory_loads.get(key)?.clone(),
        };
        let cost = if s.fitted_at == Some(self.interval) {
            s.cost
        } else {
            let (sl, sc) = (self.history(&s.shadow_load), self.history(&s.shadow_cost));
            let n = sl.len().min(sc.len());
            let fitted = demand::theil_sen(&sl[sl.len() - n..], &sc[sc.len() - n..]);
            let interval = self.interval;
            let s = self.signals_mut(metric)?;
            s.cost = fitted;
            s.fitted_at = Some(interval);
            fitted
        };
        let pl = self.history(&primary_load);
        let cost = cost?;
        if pl.len() < self.policy.min_history() {
            return None;
        }
        // One load (the mirror's packets) serves every CPU series: fitted once per interval.
        let load_fit = match self.load_fits.get(&primary_load) {
            Some((at, f)) if *at == self.interval => f.clone(),
            _ => match self.policy.fit(&pl) {
                Ok(f) => {
                    self.load_fits
                        .insert(primary_load, (self.interval, f.clone()));
                    f
                }
                Err(e) => return Some(Err(e)),
            },
        };
        Some(demand::choose(
            &self.policy,
            y,
            direct,
            &pl,
            &load_fit,
            cost,
            self.spec.horizon,
            &self.spec.levels,
        ))
    }

    /// The latest forecast of `key`.
    pub fn latest(&self, key: &str) -> Option<&Published> {
        self.tracks.get(key)?.latest.as_ref()
    }

    /// CPU seconds spent fitting so far, and fits done.
    pub fn spent(&self) -> (f64, u64) {
        (self.fit_cpu_ns as f64 / 1e9, self.fits)
    }

    /// The status-file section: per published series its latest forecast (or how much
    /// history it still needs), the shadow's cost model and the fitting cost.
    pub fn status(&self) -> serde_json::Value {
        let need = self.policy.min_history();
        let mut series = serde_json::Map::new();
        for key in &self.published {
            let Some(t) = self.tracks.get(key) else {
                continue;
            };
            let v = match &t.latest {
                Some(p) => serde_json::to_value(p).unwrap_or_default(),
                None => serde_json::json!({
                    "warming_up": format!("{} of {need} steps of {} s", t.history.len(), self.step_s),
                }),
            };
            series.insert(key.clone(), v);
        }
        let wall = self.started.elapsed().as_secs_f64();
        let (cpu_s, fits) = self.spent();
        serde_json::json!({
            "step_s": self.step_s,
            "horizon": self.spec.horizon,
            "fits": fits,
            "fit_cpu_seconds": cpu_s,
            "fit_cpu_share_of_one_core": if wall > 0.0 { cpu_s / wall } else { 0.0 },
            "shadow_cost": self.shadow.as_ref().and_then(|s| s.cost),
            "shadow_memory_cost": self.shadow_memory.as_ref().and_then(|s| s.cost),
            "restored": self.restored,
            "series": series,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::test_noise as noise;

    fn spec(step_intervals: u32) -> LiveSpec {
        LiveSpec {
            step_intervals,
            horizon: 6,
            window: 200,
            ..LiveSpec::default()
        }
    }

    #[test]
    fn config_errors_name_the_key() {
        let raw = |s: &str| -> RawForecast { toml::from_str(s).unwrap() };
        assert_eq!(raw("").validate().unwrap(), LiveSpec::default());
        let e = raw("window = 10").validate().unwrap_err();
        assert_eq!(e.0, "forecast.window");
        assert!(e.1.contains("needs"), "{}", e.1);
        assert_eq!(
            raw("levels = [80, 100]").validate().unwrap_err().0,
            "forecast.levels"
        );
        assert_eq!(
            raw("step_intervals = 0").validate().unwrap_err().0,
            "forecast.step_intervals"
        );
        assert!(toml::from_str::<RawForecast>("bogus = 1").is_err());
    }

    #[test]
    fn steps_average_intervals_and_refits_are_bounded() {
        let mut f = LiveForecaster::new(
            LiveSpec {
                max_refits_per_interval: 2,
                ..spec(2)
            },
            1.0,
        );
        for i in 0..5 {
            f.track(&format!("/cg/{i}"), "cores");
        }
        let need = Adaptive::with_horizon(6).min_history();
        assert!(f.status()["series"]["/cg/0"]["warming_up"].is_string());
        for s in 0..need * 2 + 6 {
            for i in 0..5 {
                f.observe(&format!("/cg/{i}"), 1.0 + 0.1 * noise(s * 5 + i));
            }
            let before = f.spent().1;
            f.refit_due();
            assert!(f.spent().1 - before <= 2);
        }
        // Two intervals per step: the histories reach `need` steps, and every series has a
        // forecast (the bound spreads the fits, it does not starve anyone).
        for i in 0..5 {
            let p = f.latest(&format!("/cg/{i}")).expect("forecast");
            assert_eq!(p.point.len(), 6);
            assert_eq!(p.step_s, 2.0);
            assert_eq!(p.source, "direct");
            assert!((p.point[0] - 1.0).abs() < 0.1, "{:?}", p.point);
            assert_eq!(p.intervals[0].level, 80.0);
            assert!(p.intervals[1].upper[0] >= p.intervals[0].upper[0]);
        }
        let st = f.status();
        assert!(st["fit_cpu_seconds"].as_f64().unwrap() > 0.0, "{st}");
    }

    /// A scratch history file path unique to the test, removed on drop.
    struct Scratch(std::path::PathBuf);
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    fn scratch(name: &str) -> Scratch {
        Scratch(std::env::temp_dir().join(format!(
            "shadow-forecast-history-{}-{name}.json",
            std::process::id()
        )))
    }

    /// Rewrites the file's `saved_unix_s` `steps` steps of `step_s` into the past.
    fn age(path: &std::path::Path, steps: f64, step_s: f64) {
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let t = v["saved_unix_s"].as_f64().unwrap();
        v["saved_unix_s"] = (t - steps * step_s - 0.5 * step_s).into();
        std::fs::write(path, serde_json::to_vec(&v).unwrap()).unwrap();
    }

    #[test]
    fn history_survives_a_restart_with_its_gap_filled() {
        let file = scratch("restart");
        let need = Adaptive::with_horizon(6).min_history();
        let mut f = LiveForecaster::new(spec(1), 60.0);
        f.track("/a", "cores");
        f.track_metric("/a#memory", "memory", "bytes");
        for s in 0..need + 5 {
            f.observe("/a", 1.0 + 0.1 * noise(s));
            f.observe("/a#memory", 1e9);
            f.refit_due();
        }
        assert!(f.latest("/a").is_some());
        f.save(&file.0).unwrap();
        let before: Vec<f64> = f.history("/a");
        age(&file.0, 3.0, 60.0);

        // A new run: tracked series get their history plus 3 steps of the last value, and
        // forecast at the first refit instead of warming up.
        let mut g = LiveForecaster::new(spec(1), 60.0);
        g.track("/a", "cores");
        let r = g.restore(&file.0).unwrap().expect("a file");
        assert_eq!((r.series, r.taken, r.gap_steps), (2, 1, 3), "{r:?}");
        assert!(r.discarded.is_none());
        let h = g.history("/a");
        // (JSON keeps a double to within an ulp.)
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs();
        assert!(h.iter().zip(&before).all(|(a, b)| close(*a, *b)));
        assert_eq!(h.len(), before.len() + 3);
        let last = *before.last().unwrap();
        assert!(h[before.len()..].iter().all(|v| close(*v, last)));
        g.refit_due();
        assert!(g.latest("/a").is_some(), "{}", g.status());
        assert_eq!(g.status()["restored"]["taken"], 1);
        // A series tracked later (a reload, a pattern's new match) takes its own.
        g.track_metric("/a#memory", "memory", "bytes");
        assert_eq!(g.history("/a#memory").len(), before.len() + 3);
        assert_eq!(g.status()["restored"]["taken"], 2);
        // Not taken twice.
        g.untrack("/a#memory");
        g.track_metric("/a#memory", "memory", "bytes");
        assert!(g.history("/a#memory").is_empty());
    }

    #[test]
    fn a_stale_or_foreign_history_is_not_restored() {
        let file = scratch("stale");
        let mut f = LiveForecaster::new(spec(1), 60.0);
        f.track("/a", "cores");
        for s in 0..50 {
            f.observe("/a", 1.0 + 0.1 * noise(s));
        }
        f.save(&file.0).unwrap();
        // Another step length.
        let mut g = LiveForecaster::new(spec(2), 60.0);
        g.track("/a", "cores");
        let r = g.restore(&file.0).unwrap().unwrap();
        assert!(
            r.discarded.as_deref().unwrap().contains("steps of 60 s"),
            "{r:?}"
        );
        assert!(g.history("/a").is_empty());
        // Too old: more than max_gap_steps.
        let mut g = LiveForecaster::new(spec(1), 60.0);
        g.track("/a", "cores");
        age(&file.0, (g.max_gap_steps() + 1) as f64, 60.0);
        let r = g.restore(&file.0).unwrap().unwrap();
        assert!(
            r.discarded.as_deref().unwrap().contains("steps ago"),
            "{r:?}"
        );
        assert!(g.history("/a").is_empty());
        // No file yet; a broken one.
        let missing = scratch("missing");
        assert_eq!(g.restore(&missing.0), Ok(None));
        std::fs::write(&file.0, b"{not json").unwrap();
        let e = g.restore(&file.0).unwrap_err();
        assert!(
            e.contains("parsing") && e.contains(&*file.0.to_string_lossy()),
            "{e}"
        );
    }

    #[test]
    fn history_file_must_be_absolute() {
        let raw: RawForecast = toml::from_str("history_file = \"rel/h.json\"").unwrap();
        let (k, m) = raw.validate().unwrap_err();
        assert_eq!(k, "forecast.history_file");
        assert!(m.contains("rel/h.json"), "{m}");
        let raw: RawForecast = toml::from_str("history_file = \"/var/lib/h.json\"").unwrap();
        assert!(raw.validate().unwrap().history_file.is_some());
    }

    #[test]
    fn an_untracked_series_is_forgotten_and_can_come_back_fresh() {
        let mut f = LiveForecaster::new(spec(1), 1.0);
        f.track("/a", "cores");
        f.track_metric("/a#memory", "memory", "bytes");
        f.memory_load("/a#memory", "/a#flows");
        f.track("/b", "cores");
        let need = Adaptive::with_horizon(6).min_history();
        for s in 0..need + 2 {
            for k in ["/a", "/b", "/a#memory", "/a#flows"] {
                f.observe(k, 1.0 + 0.1 * noise(s));
            }
            f.refit_due();
        }
        assert!(f.latest("/a").is_some() && f.latest("/b").is_some());
        f.untrack("/a");
        f.untrack("/a#memory");
        assert!(f.latest("/a").is_none() && f.latest("/a#memory").is_none());
        let st = f.status();
        assert!(st["series"].get("/a").is_none(), "{st}");
        assert!(st["series"].get("/a#memory").is_none(), "{st}");
        assert!(st["series"].get("/b").is_some(), "{st}");
        // Samples of a forgotten key go nowhere; tracked again, it starts from nothing.
        f.observe("/a", 5.0);
        f.track("/a", "cores");
        f.refit_due();
        assert!(f.latest("/a").is_none());
        assert!(f.status()["series"]["/a"]["warming_up"].is_string());
    }

    #[test]
    fn shadow_signals_feed_a_derived_forecast() {
        let mut f = LiveForecaster::new(spec(1), 1.0);
        f.track("/primary", "cores");
        f.track_metric("/primary#memory", "memory", "bytes");
        f.use_shadow("load", "shadow_load", "shadow_cpu");
        for i in 0..200 {
            f.observe("/primary#memory", 3e8 + 1e6 * noise(i + 1300));
            let load = 200.0 + 150.0 * (i as f64 * std::f64::consts::TAU / 24.0).sin() + noise(i);
            f.observe("load", load);
            f.observe("shadow_load", 0.5 * load);
            f.observe(
                "shadow_cpu",
                0.02 + 0.001 * 0.5 * load + 0.005 * noise(i + 500),
            );
            f.observe("/primary", 0.02 + 0.001 * load + 0.08 * noise(i + 900));
            f.refit_due();
        }
        let p = f.latest("/primary").expect("forecast");
        assert_eq!(p.source, "shadow_derived", "{}", p.reason);
        assert_eq!(p.metric, "cpu");
        // Memory is forecast directly: no memory-per-flow signals were given.
        let m = f.latest("/primary#memory").expect("memory forecast");
        assert_eq!((m.metric.as_str(), m.unit.as_str()), ("memory", "bytes"));
        assert_eq!(m.source, "direct");
        assert!(m.reason.contains("memory per flow"), "{}", m.reason);
        assert!((m.point[0] / 3e8 - 1.0).abs() < 0.02, "{:?}", m.point);
        let st = f.status();
        let slope = st["shadow_cost"]["slope"].as_f64().unwrap();
        assert!((slope - 0.001).abs() < 0.0002, "{st}");
        assert!(st["shadow_memory_cost"].is_null(), "{st}");
    }

    #[test]
    fn memory_per_flow_feeds_a_derived_memory_forecast() {
        // The primary holds 2 MB per open connection over a 60 MB base; its connections
        // follow a wave, the shadow sees about half of them. The primary's memory is noisy
        // (other allocations), the shadow's cost line is clean: the derived forecast wins.
        const MB: f64 = 1e6;
        let mut f = LiveForecaster::new(spec(1), 1.0);
        f.track_metric("/primary#memory", "memory", "bytes");
        f.track_metric("/other#memory", "memory", "bytes");
        f.use_shadow_memory("shadow_flows", "shadow_memory");
        f.memory_load("/primary#memory", "/primary#flows");
        for i in 0..200 {
            let flows = (20.0 + 15.0 * (i as f64 * std::f64::consts::TAU / 24.0).sin()).round();
            let shadow_flows = (flows / 2.0).round();
            f.observe("/primary#flows", flows);
            f.observe("shadow_flows", shadow_flows);
            f.observe(
                "shadow_memory",
                60.0 * MB + 2.0 * MB * shadow_flows + 0.2 * MB * noise(i + 50),
            );
            f.observe(
                "/primary#memory",
                60.0 * MB + 2.0 * MB * flows + 8.0 * MB * noise(i + 700),
            );
            f.observe("/other#memory", 3e8 + 1e6 * noise(i + 1300));
            f.refit_due();
        }
        let p = f.latest("/primary#memory").expect("memory forecast");
        assert_eq!(p.source, "shadow_derived", "{}", p.reason);
        let st = f.status();
        let cost = &st["shadow_memory_cost"];
        let slope = cost["slope"].as_f64().unwrap();
        assert!((slope / (2.0 * MB) - 1.0).abs() < 0.05, "{cost}");
        // The next step's truth (flows at i = 200) lies in the 95% interval.
        let flows = (20.0 + 15.0 * (200.0 * std::f64::consts::TAU / 24.0).sin()).round();
        let truth = 60.0 * MB + 2.0 * MB * flows;
        let i95 = &p.intervals[1];
        assert!(
            i95.lower[0] <= truth && truth <= i95.upper[0],
            "{truth} not in [{}, {}]",
            i95.lower[0],
            i95.upper[0]
        );
        // A cgroup whose flows are not counted is forecast directly, and says why.
        let o = f.latest("/other#memory").expect("memory forecast");
        assert_eq!(o.source, "direct");
        assert!(o.reason.contains("not counted"), "{}", o.reason);
    }
}
