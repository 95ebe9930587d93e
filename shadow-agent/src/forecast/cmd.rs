//! The `shadow-agent forecast` command: point forecasts and intervals for a cgroup the
//! running agent tracks (from its status file), or for a series of a recorded trace.
//! Exit codes: 0 success, 2 bad input (unknown cgroup or series, bad arguments), 1 no
//! running agent or no forecast yet.

use std::{io::Write as _, path::PathBuf};

use crate::error::chain;

use super::{
    data::{self, Resample},
    live::{Published, PublishedInterval},
    policy::Adaptive,
    Fitted as _, Forecaster as _,
};

/// Print forecasts: `--cgroup PATH` from the running agent, or `--data FILE --metric COL`
/// for a recorded trace.
#[derive(Debug, Clone, clap::Args)]
#[command(
    group(clap::ArgGroup::new("source").required(true).args(["cgroup", "data"])),
    after_help = "Examples:\n  shadow-agent forecast --cgroup /sys/fs/cgroup/unified/shop/web\n  shadow-agent forecast --cgroup /sys/fs/cgroup/unified/shop/web --horizon 12 --json\n  shadow-agent forecast --data ../shared/data/traces/bitbrains_rnd/usage.csv --metric cpu_pct --series bitbrains_rnd_2013-8_vm10"
)]
pub struct ForecastArgs {
    /// A cgroup the running agent profiles (a path of its profile.cgroups, or a pattern's match).
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    /// Which of --cgroup's series: `cpu` (cores) or `memory` (bytes).
    #[arg(long, value_enum, default_value_t = Resource::Cpu, requires = "cgroup")]
    pub resource: Resource,
    /// A trace in the long CSV format (`series_id,timestamp_s,<metrics>`).
    #[arg(long, requires = "metric")]
    pub data: Option<PathBuf>,
    /// The metric column of --data.
    #[arg(long)]
    pub metric: Option<String>,
    /// The series of --data (default: the only one in the file).
    #[arg(long)]
    pub series: Option<String>,
    /// Steps to print (default: all the agent published; 12 for --data).
    #[arg(long)]
    pub horizon: Option<usize>,
    /// Samples of --data fitted on (the last ones).
    #[arg(long, default_value_t = 576)]
    pub window: usize,
    /// Interval levels in percent (--data only; the agent's are set in its config).
    #[arg(long, value_delimiter = ',', default_value = "80,95")]
    pub levels: Vec<f64>,
    /// The status file the agent publishes (default: $SHADOW_STATUS_FILE, else
    /// /run/shadow-agent/status.json, as `run` publishes it).
    #[arg(long)]
    pub status_file: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

/// A tracked cgroup's forecast series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Resource {
    Cpu,
    Memory,
}

#[derive(Debug, thiserror::Error)]
pub enum ForecastCliError {
    #[error("cgroup {path}: cannot read the running agent's forecasts")]
    Status {
        path: String,
        #[source]
        source: crate::status::StatusError,
    },
    #[error("cgroup {path} is not tracked by the running agent (tracked: {tracked})")]
    NotTracked { path: String, tracked: String },
    #[error("cgroup {path}: no forecast yet ({why})")]
    NotYet { path: String, why: String },
    #[error(
        "cgroup {path}: the running agent forecasts its CPU but not its memory (it found \
         neither memory.current nor a v1 memory group for it)"
    )]
    NoMemory { path: String },
    #[error("--horizon {requested}: the forecast has {available} steps")]
    Horizon { requested: usize, available: usize },
    #[error(transparent)]
    Data(#[from] data::DataError),
    #[error("{path}: no series {id:?} with values of {metric} ({count} series: {first})")]
    NoSeries {
        path: PathBuf,
        id: String,
        metric: String,
        count: usize,
        first: String,
    },
    #[error("{path}: {count} series have {metric}; choose one with --series (e.g. {first})")]
    Ambiguous {
        path: PathBuf,
        metric: String,
        count: usize,
        first: String,
    },
    #[error("{arg}: {reason}")]
    Usage { arg: &'static str, reason: String },
    #[error("series {id}: {source}")]
    Fit {
        id: String,
        #[source]
        source: super::ForecastError,
    },
}

impl ForecastCliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            ForecastCliError::Status { .. } | ForecastCliError::NotYet { .. } => 1,
            _ => 2,
        }
    }
}

/// Runs the command; returns the exit code (errors are printed on stderr).
pub fn forecast(args: &ForecastArgs) -> u8 {
    let result = match (&args.cgroup, &args.data) {
        (Some(path), _) => from_agent(args, path),
        (None, Some(file)) => from_trace(args, file),
        (None, None) => Err(ForecastCliError::Usage {
            arg: "--cgroup or --data",
            reason: "one is required".into(),
        }),
    };
    match result {
        Ok(out) => {
            let _ = std::io::stdout().write_all(out.as_bytes());
            0
        }
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            e.exit_code()
        }
    }
}

fn normalise(p: &str) -> String {
    let t = p.trim_end_matches('/');
    if t.is_empty() {
        "/".into()
    } else {
        t.to_owned()
    }
}

fn from_agent(args: &ForecastArgs, path: &std::path::Path) -> Result<String, ForecastCliError> {
    let status_file = args
        .status_file
        .clone()
        .unwrap_or_else(crate::status::status_path);
    let v = crate::status::read(&status_file).map_err(|source| ForecastCliError::Status {
        path: path.display().to_string(),
        source,
    })?;
    let suffix = crate::run::MEMORY_SUFFIX;
    let want = normalise(&path.display().to_string());
    let series = v["forecast"]["series"].as_object();
    // Cgroups are listed by path; `--resource memory` picks the path's memory series.
    let tracked: Vec<&String> = series
        .map(|m| m.keys().filter(|k| !k.ends_with(suffix)).collect())
        .unwrap_or_default();
    let found = series.into_iter().flat_map(|m| m.iter()).find(|(k, _)| {
        match (args.resource, k.strip_suffix(suffix)) {
            (Resource::Cpu, None) => normalise(k) == want,
            (Resource::Memory, Some(p)) => normalise(p) == want,
            _ => false,
        }
    });
    if found.is_none()
        && args.resource == Resource::Memory
        && tracked.iter().any(|k| normalise(k) == want)
    {
        return Err(ForecastCliError::NoMemory { path: want });
    }
    let Some((key, entry)) = found else {
        return Err(ForecastCliError::NotTracked {
            path: path.display().to_string(),
            tracked: if tracked.is_empty() {
                "none: the agent runs without [forecast] or tracks no cgroup".into()
            } else {
                tracked
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        });
    };
    if let Some(w) = entry["warming_up"].as_str() {
        return Err(ForecastCliError::NotYet {
            path: key.clone(),
            why: format!("warming up: {w}"),
        });
    }
    let p: Published =
        serde_json::from_value(entry.clone()).map_err(|e| ForecastCliError::NotYet {
            path: key.clone(),
            why: format!("unreadable entry in the status file: {e}"),
        })?;
    render(&format!("cgroup {key}"), "cgroup", key, &p, args)
}

fn from_trace(args: &ForecastArgs, file: &std::path::Path) -> Result<String, ForecastCliError> {
    let metric = args.metric.clone().unwrap_or_default();
    let horizon = args.horizon.unwrap_or(12);
    if horizon == 0 {
        return Err(ForecastCliError::Usage {
            arg: "--horizon",
            reason: "must be at least 1".into(),
        });
    }
    let ds = data::load_csv(file, &metric, Resample::default())?;
    let first = ds
        .series
        .iter()
        .take(3)
        .map(|s| s.id.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let s = match &args.series {
        Some(id) => ds.series.iter().find(|s| &s.id == id).ok_or_else(|| {
            let why = ds
                .skipped
                .iter()
                .find(|k| &k.id == id)
                .map(|k| format!("skipped: {}", k.reason));
            ForecastCliError::NoSeries {
                path: file.to_owned(),
                id: id.clone(),
                metric: metric.clone(),
                count: ds.series.len(),
                first: why.unwrap_or_else(|| first.clone()),
            }
        })?,
        None if ds.series.len() == 1 => &ds.series[0],
        None => {
            return Err(ForecastCliError::Ambiguous {
                path: file.to_owned(),
                metric,
                count: ds.series.len(),
                first,
            })
        }
    };
    let levels: Vec<f64> = args.levels.iter().map(|l| l / 100.0).collect();
    let y = &s.values[s.values.len().saturating_sub(args.window.max(1))..];
    let fit_err = |source| ForecastCliError::Fit {
        id: s.id.clone(),
        source,
    };
    let fitted = Adaptive::with_horizon(horizon).fit(y).map_err(fit_err)?;
    let f = fitted.predict(horizon, &levels).map_err(fit_err)?;
    let p = Published {
        metric: metric.clone(),
        unit: metric.clone(),
        step_s: s.step_s,
        samples: y.len(),
        fitted_unix_s: 0.0,
        point: f.point,
        intervals: f
            .intervals
            .into_iter()
            .map(|i| PublishedInterval {
                level: (i.level * 1e4).round() / 100.0,
                lower: i.lower,
                upper: i.upper,
            })
            .collect(),
        source: "direct".into(),
        reason: format!(
            "default policy (adaptive); step 1 combines {}",
            fitted.chosen(1).join("+")
        ),
        period: fitted.period(),
    };
    render(
        &format!("series {} of {}", s.id, file.display()),
        "series",
        &s.id,
        &p,
        &ForecastArgs {
            horizon: Some(horizon),
            ..args.clone()
        },
    )
}

fn render(
    title: &str,
    kind: &str,
    id: &str,
    p: &Published,
    args: &ForecastArgs,
) -> Result<String, ForecastCliError> {
    let available = p.point.len();
    let h = args.horizon.unwrap_or(available);
    if h == 0 || h > available {
        return Err(ForecastCliError::Horizon {
            requested: h,
            available,
        });
    }
    if args.json {
        let steps: Vec<serde_json::Value> = (0..h)
            .map(|i| {
                let intervals: serde_json::Map<String, serde_json::Value> = p
                    .intervals
                    .iter()
                    .map(|iv| {
                        (
                            format!("{}", iv.level),
                            serde_json::json!([iv.lower[i], iv.upper[i]]),
                        )
                    })
                    .collect();
                serde_json::json!({
                    "step": i + 1,
                    "ahead_s": p.step_s * (i + 1) as f64,
                    "point": p.point[i],
                    "intervals": intervals,
                })
            })
            .collect();
        let v = serde_json::json!({
            kind: id,
            "metric": p.metric,
            "unit": p.unit,
            "step_s": p.step_s,
            "samples": p.samples,
            "fitted_unix_s": p.fitted_unix_s,
            "source": p.source,
            "reason": p.reason,
            "period": p.period,
            "steps": steps,
        });
        return Ok(format!("{v}\n"));
    }
    let mut out = format!(
        "{title}: {} in {}, step {} s, fitted on {} steps; source {} ({})\n",
        p.metric, p.unit, p.step_s, p.samples, p.source, p.reason
    );
    out.push_str(&format!("{:>4} {:>9} {:>12}", "step", "ahead_s", "point"));
    for iv in &p.intervals {
        out.push_str(&format!(
            " {:>12} {:>12}",
            format!("lo{}", iv.level),
            format!("hi{}", iv.level)
        ));
    }
    out.push('\n');
    for i in 0..h {
        out.push_str(&format!(
            "{:>4} {:>9} {:>12.4}",
            i + 1,
            p.step_s * (i + 1) as f64,
            p.point[i]
        ));
        for iv in &p.intervals {
            out.push_str(&format!(" {:>12.4} {:>12.4}", iv.lower[i], iv.upper[i]));
        }
        out.push('\n');
    }
    Ok(out)
}
