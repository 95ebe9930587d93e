//! The `shadow-agent backtest` command: arguments, output and exit codes (0 success, 2 bad
//! input or usage, 1 runtime failure).

use crate::error::chain;
use std::{io::Write, path::PathBuf};

use super::{
    backtest::{self, BacktestConfig, ModelKind},
    data::{self, Resample},
};

/// Rolling-origin backtest of every forecaster on a trace in the long CSV format
/// (`series_id,timestamp_s,<metric columns>`).
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Each series is resampled to its median sampling step; gaps of up to 6 steps are \
                  interpolated, longer ones split the series and the longest piece is kept.\n\n\
                  Example:\n  shadow-agent backtest --data usage.csv --metric cpu_pct --window 576 --horizon 12"
)]
pub struct BacktestArgs {
    /// The CSV file.
    #[arg(long)]
    pub data: PathBuf,
    /// The metric column to forecast.
    #[arg(long)]
    pub metric: String,
    /// Forecast steps scored at every origin (1..=H).
    #[arg(long, default_value_t = 12)]
    pub horizon: usize,
    /// Training window, in samples.
    #[arg(long, default_value_t = 576)]
    pub window: usize,
    /// Interval levels in percent.
    #[arg(long, value_delimiter = ',', default_value = "80,95")]
    pub levels: Vec<f64>,
    /// Samples between origins (default: the horizon).
    #[arg(long)]
    pub stride: Option<usize>,
    /// Models to run, comma-separated (default: every model of this build; an unknown name
    /// is answered with the list). `prophet` needs a build with `--features prophet`,
    /// `auto_arima` one with `--features arima`.
    #[arg(long, value_delimiter = ',')]
    pub models: Vec<String>,
    /// At most this many origins per series, evenly spread.
    #[arg(long)]
    pub max_origins: Option<usize>,
    /// At most this many series (the first ones in the file).
    #[arg(long)]
    pub max_series: Option<usize>,
    /// Worker threads (default: the available cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Season m of the MASE scale, in samples: the forecast's MAE is divided by the in-sample
    /// MAE of the seasonal naive forecast with season m on the training window (Nixtla's
    /// `mase(seasonality=m)`); 1 is the one-step naive scale. Default: one day at the
    /// series' step (288 at 5 minutes) when that is shorter than the window, else 1.
    #[arg(long)]
    pub mase_season: Option<usize>,
    /// Also print every series' scores (in the table; the JSON always has them).
    #[arg(long)]
    pub per_series: bool,
    /// JSON on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Errors of the command, with their exit codes.
#[derive(Debug, thiserror::Error)]
pub enum BacktestCliError {
    #[error(transparent)]
    Data(#[from] data::DataError),
    #[error(transparent)]
    Backtest(#[from] backtest::BacktestError),
    #[error("writing the report")]
    Output {
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl BacktestCliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            BacktestCliError::Data(_) | BacktestCliError::Backtest(_) => 2,
            BacktestCliError::Output { .. } => 1,
        }
    }
}

/// Runs the command; returns the exit code (errors are printed on stderr).
pub fn backtest(args: &BacktestArgs) -> u8 {
    match run(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            e.exit_code()
        }
    }
}

fn run(args: &BacktestArgs) -> Result<(), BacktestCliError> {
    let models = if args.models.is_empty() {
        ModelKind::ALL.to_vec()
    } else {
        args.models
            .iter()
            .map(|m| ModelKind::parse(m.trim()))
            .collect::<Result<Vec<_>, _>>()?
    };
    let cfg = BacktestConfig {
        window: args.window,
        horizon: args.horizon,
        stride: args.stride.unwrap_or(args.horizon.max(1)),
        levels: args.levels.iter().map(|l| l / 100.0).collect(),
        max_origins: args.max_origins,
        max_series: args.max_series,
        threads: args
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        mase_season: args.mase_season,
    };
    let dataset = data::load_csv(&args.data, &args.metric, Resample::default())?;
    let bar = crate::progress::bar(0, "series backtested", args.json);
    let report = backtest::run_with_progress(&dataset, &models, &cfg, &|done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    });
    bar.finish_and_clear();
    let report = report?;
    let out = if args.json {
        serde_json::to_string_pretty(&report).map_err(|e| BacktestCliError::Output {
            source: Box::new(e),
        })? + "\n"
    } else {
        let mut s = report.table(&cfg.levels);
        if args.per_series {
            for sr in &report.per_series {
                s.push_str(&format!(
                    "\n{} ({} points, {} interpolated, {} origins)\n",
                    sr.id, sr.length, sr.imputed, sr.origins
                ));
                for m in &sr.models {
                    s.push_str(&format!(
                        "  {:<16} MASE {:>7.3} sMAPE {:>7.2}",
                        m.name, m.mase, m.smape
                    ));
                    for (k, v) in &m.coverage {
                        s.push_str(&format!(" cov{k} {v:.3}"));
                    }
                    s.push('\n');
                }
            }
        }
        s
    };
    std::io::stdout()
        .write_all(out.as_bytes())
        .map_err(|e| BacktestCliError::Output {
            source: Box::new(e),
        })
}
