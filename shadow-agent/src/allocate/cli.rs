//! The `shadow-agent simulate` command: replays a recorded trace under the four allocation
//! policies of [`super::sim`] (the predictive one driven by the default forecaster) and prints
//! slack, shortage and changes per policy. Exit codes: 0 success, 2 bad input or usage, 1 a
//! failure writing the report.

use crate::error::chain;
use std::{io::Write, path::PathBuf};

use serde::Serialize;

use super::policy::Resource;
use super::sim::{self, AdaptiveSim, SimConfig, SimReport};
use crate::forecast::data::{self, Resample};

/// Trace-driven simulation of the allocation policies on a long-format CSV trace
/// (`series_id,timestamp_s,<metric columns>`).
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Policies: static (peak of the warm-up), reactive (step up on usage near the \
                  limit or throttling/OOM), vpa (decaying p90 + 15%), predictive (the default \
                  forecaster's calibrated upper bound + headroom when confident, reactive \
                  otherwise). Each series is resampled to its median step as `backtest` does.\n\n\
                  Example:\n  shadow-agent simulate --data usage.csv --metric cpu_pct --json"
)]
pub struct SimulateArgs {
    /// The CSV file.
    #[arg(long)]
    pub data: PathBuf,
    /// The metric column to replay.
    #[arg(long)]
    pub metric: String,
    /// JSON on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// cpu (usage above the limit is throttling) or memory (an OOM). Default: memory if the
    /// metric's name contains "mem", cpu otherwise.
    #[arg(long)]
    pub resource: Option<String>,
    /// Upper bound of every limit. Default: 100 for a `*_pct` metric, otherwise 4x the peak
    /// of each series' warm-up.
    #[arg(long)]
    pub capacity: Option<f64>,
    /// Warm-up samples, not scored (static = their peak). Default: one day at the series'
    /// step, at most half the series.
    #[arg(long)]
    pub warmup: Option<usize>,
    /// At most this many series (the first ones in the file).
    #[arg(long)]
    pub max_series: Option<usize>,
    /// Samples the forecaster is fitted on.
    #[arg(long, default_value_t = 576)]
    pub window: usize,
    /// Intervals between refits of the forecaster.
    #[arg(long, default_value_t = 12)]
    pub refit_every: usize,
    /// Lead time (intervals) the forecast's upper bound must cover.
    #[arg(long, default_value_t = 1)]
    pub lead: usize,
    /// Intervals a forecast shrink must cover, at least the lead time (default, 0: the lead
    /// time plus the simulator's cooldown of one interval, i.e. 2).
    #[arg(long, default_value_t = 0)]
    pub shrink_cover: usize,
    /// Interval level of the forecast bound, percent.
    #[arg(long)]
    pub level: Option<f64>,
    /// Fraction added to a confident upper bound.
    #[arg(long)]
    pub headroom: Option<f64>,
    /// Changes smaller than this fraction of the limit are not made.
    #[arg(long)]
    pub hysteresis: Option<f64>,
    /// Intervals a shrink must be proposed in a row before it is made.
    #[arg(long)]
    pub shrink_hold: Option<u32>,
    /// Largest (upper - lower) / point of a confident forecast.
    #[arg(long)]
    pub max_rel_width: Option<f64>,
    /// Reactive scale-in of the reactive and predictive policies: usage below this fraction
    /// of the limit for `--scale-in-after` intervals steps the limit down (default: off).
    #[arg(long, requires = "scale_in_after")]
    pub scale_in_below: Option<f64>,
    /// Intervals of usage below `--scale-in-below` before a reactive scale-in.
    #[arg(long, requires = "scale_in_below")]
    pub scale_in_after: Option<u32>,
    /// For this many intervals after a shortage, no shrink goes below one reactive step
    /// above the limit that was short (`[allocate.*] shortage_memory_intervals`).
    #[arg(long)]
    pub shortage_memory: Option<u32>,
    /// Calibrate the predictive target per series towards this shortage rate (fraction).
    #[arg(long)]
    pub shortage_target: Option<f64>,
    /// Worker threads (default: the available cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Errors of the command.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error(transparent)]
    Data(#[from] data::DataError),
    #[error("--{arg}: {reason}")]
    Usage { arg: &'static str, reason: String },
    #[error("no series of {metric:?} in {path} is longer than its warm-up ({skipped} skipped)")]
    NoSeries {
        metric: String,
        path: PathBuf,
        skipped: usize,
    },
    #[error("writing the report")]
    Output {
        #[source]
        source: std::io::Error,
    },
}

impl SimulateError {
    pub fn exit_code(&self) -> u8 {
        match self {
            SimulateError::Output { .. } => 1,
            _ => 2,
        }
    }
}

/// The whole output: the shape issue 8 asks for plus what was simulated.
#[derive(Debug, Clone, Serialize)]
pub struct SimulateOutput {
    pub metric: String,
    pub resource: Resource,
    pub series: usize,
    pub skipped: usize,
    /// Intervals a forecast shrink covered.
    pub shrink_cover: usize,
    #[serde(flatten)]
    pub report: SimReport,
}

fn usage(arg: &'static str, reason: impl Into<String>) -> SimulateError {
    SimulateError::Usage {
        arg,
        reason: reason.into(),
    }
}

/// Runs the command; returns the exit code (errors are printed on stderr).
pub fn simulate(args: &SimulateArgs) -> u8 {
    match run(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            e.exit_code()
        }
    }
}

/// Evaluates `args` without printing.
pub fn evaluate(args: &SimulateArgs) -> Result<SimulateOutput, SimulateError> {
    let resource = match args.resource.as_deref() {
        None if args.metric.contains("mem") => Resource::Memory,
        None | Some("cpu") => Resource::Cpu,
        Some("memory") => Resource::Memory,
        Some(other) => return Err(usage("resource", format!("{other:?} is not cpu or memory"))),
    };
    let pred = AdaptiveSim {
        window: args.window,
        refit_every: args.refit_every,
        lead: args.lead,
        shrink_cover: args.shrink_cover,
        level: args
            .level
            .map_or(AdaptiveSim::default().level, |l| l / 100.0),
    };
    if pred.window < 100 {
        return Err(usage("window", "must be at least 100 samples"));
    }
    if pred.refit_every == 0 || pred.lead == 0 {
        return Err(usage("refit-every/--lead", "must be at least 1"));
    }
    if !(pred.level > 0.0 && pred.level < 1.0) {
        return Err(usage("level", "must be a percentage in (0, 100)"));
    }
    if let Some(c) = args.capacity {
        if !(c.is_finite() && c > 0.0) {
            return Err(usage("capacity", "must be a positive number"));
        }
    }
    let dataset = data::load_csv(&args.data, &args.metric, Resample::default())?;
    let mut skipped = dataset.skipped.len();
    let mut todo: Vec<(SimConfig, &[f64])> = Vec::new();
    for s in &dataset.series {
        if args.max_series.is_some_and(|m| todo.len() >= m) {
            break;
        }
        let per_day = (86_400.0 / s.step_s.max(1.0)).round() as usize;
        let warmup = args.warmup.unwrap_or(per_day.min(s.values.len() / 2));
        if warmup == 0 || s.values.len() <= warmup {
            skipped += 1;
            continue;
        }
        let peak = s.values[..warmup].iter().copied().fold(0.0_f64, f64::max);
        let capacity = args.capacity.unwrap_or(if args.metric.ends_with("_pct") {
            100.0
        } else {
            (4.0 * peak).max(1e-6)
        });
        let mut cfg = match resource {
            Resource::Memory => SimConfig::memory(capacity, s.step_s),
            _ => SimConfig::cpu(capacity, s.step_s),
        };
        cfg.warmup = warmup;
        cfg.vpa_half_life = per_day.max(1) as f64;
        if let Some(h) = args.headroom {
            cfg.policy.headroom = h;
        }
        if let Some(t) = args.shortage_target {
            cfg.policy.shortage_target = Some(t);
        }
        if let Some(h) = args.hysteresis {
            cfg.rails.hysteresis = h;
        }
        if let Some(k) = args.shrink_hold {
            cfg.rails.shrink_hold_intervals = k;
        }
        if let Some(w) = args.max_rel_width {
            cfg.policy.confidence.max_rel_width = w;
        }
        if let (Some(b), Some(n)) = (args.scale_in_below, args.scale_in_after) {
            cfg = cfg.with_scale_in(b, n);
        }
        if let Some(w) = args.shortage_memory {
            cfg.rails.shortage_memory_intervals = w;
        }
        if let Err((key, reason)) = cfg.rails.validate_with(&cfg.policy) {
            let flag = match key {
                "scale_in_below" => "scale-in-below",
                k => k,
            };
            return Err(usage(flag, reason));
        }
        todo.push((cfg, s.values.as_slice()));
    }
    if todo.is_empty() {
        return Err(SimulateError::NoSeries {
            metric: args.metric.clone(),
            path: args.data.clone(),
            skipped,
        });
    }
    let pred = pred.for_cooldown(todo[0].0.rails.cooldown_intervals);
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let bar = crate::progress::bar(todo.len() as u64, "series simulated", args.json);
    let report = sim::simulate_par_with_progress(
        &todo,
        threads,
        || Box::new(sim::adaptive_forecast(pred)),
        &|done| bar.set_position(done as u64),
    );
    bar.finish_and_clear();
    Ok(SimulateOutput {
        metric: args.metric.clone(),
        resource,
        series: todo.len(),
        skipped,
        shrink_cover: pred.cover(),
        report,
    })
}

fn run(args: &SimulateArgs) -> Result<(), SimulateError> {
    let out = evaluate(args)?;
    let text = if args.json {
        serde_json::to_string(&out).unwrap_or_default() + "\n"
    } else {
        format!(
            "{} series ({} skipped), metric {} ({}), predictive: default forecaster refitted \
             every {} intervals, lead {}, a shrink covers {}\n{}",
            out.series,
            out.skipped,
            out.metric,
            out.resource.as_str(),
            args.refit_every,
            args.lead,
            out.shrink_cover,
            out.report.table()
        )
    };
    std::io::stdout()
        .write_all(text.as_bytes())
        .map_err(|source| SimulateError::Output { source })
}
