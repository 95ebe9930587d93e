//! `shadow-agent report`: a self-contained HTML page (inline SVG plots drawn with plotters, no
//! external assets, no script) from the agent's JSON lines and, optionally, the allocator's
//! audit log.
//!
//! Input lines, any mix of:
//! - `run --json`: `t_s`, `mirror{...}` (cumulative), `cgroups{PATH: {cpu_seconds
//!   (cumulative), memory_bytes, forecast | forecasts{cpu, memory}, limits{cpu_cores,
//!   memory_bytes}}}`, `shadow[{index, discard{tx_dropped_packets, connect_refused,
//!   sendmsg_refused}, restarts, running}]`, `refused[[{addr, port, proto, attempts}]]`, and
//!   optionally `time_ms` (wall clock, which places audit decisions on the same axis) and
//!   `interval_s`;
//! - `profile --json`: `{"type":"sample", t_s, cgroup, cpu{utilization}, memory{usage_bytes}}`;
//! - `demo --json`: per-second rows and the final `{"summary":true}` object.
//!
//! A forecast is `{point, lower, upper, level[, horizon_s]}` (the allocator's input) or the
//! forecaster's `{point: [...], intervals: [{level, lower: [...], upper: [...]}]}` (first
//! step); it is drawn at `t_s + horizon_s`, or one interval after `t_s`. Unknown keys are
//! ignored; a line that is not a JSON object or has a known key of the wrong type is an error
//! naming the file and line (exit 2).

pub mod chart;
pub mod input;
pub mod page;

use std::{
    io::BufRead as _,
    path::{Path, PathBuf},
};

use input::{Decision, Run};

/// Why a report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: {reason}", path.display())]
    BadLine {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{}: no line has data to plot ({lines} lines read; expected `shadow-agent run --json`, `profile --json` or `demo --json` output)", path.display())]
    Empty { path: PathBuf, lines: usize },
    #[error("drawing the chart \"{chart}\": {reason}")]
    Plot { chart: String, reason: String },
    #[error("writing {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ReportError {
    /// 2 for problems with the inputs (usage), 1 for failures to draw or write.
    pub fn exit_code(&self) -> u8 {
        match self {
            ReportError::Read { .. } | ReportError::BadLine { .. } | ReportError::Empty { .. } => 2,
            ReportError::Plot { .. } | ReportError::Write { .. } => 1,
        }
    }
}

/// `shadow-agent report` arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Examples:\n  shadow-agent run --config agent.toml --json --duration 600 > run.jsonl\n  shadow-agent report --input run.jsonl --audit /var/lib/shadow/audit.jsonl --out report/\n  shadow-agent report --input demo.jsonl --out /tmp/report --json"
)]
pub struct ReportArgs {
    /// JSON lines of `run --json`, `profile --json` or `demo --json`.
    #[arg(long, value_name = "FILE.jsonl")]
    pub input: PathBuf,
    /// The allocator's audit log (JSON lines); its decisions are marked on the limit plots.
    #[arg(long, value_name = "AUDIT.jsonl")]
    pub audit: Option<PathBuf>,
    /// Directory to write index.html into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// `{"report": PATH}` on stdout instead of the text line.
    #[arg(long)]
    pub json: bool,
}

fn read_lines(
    path: &Path,
    mut each: impl FnMut(usize, serde_json::Map<String, serde_json::Value>) -> input::LineResult<()>,
) -> Result<(), ReportError> {
    let file = std::fs::File::open(path).map_err(|source| ReportError::Read {
        path: path.to_owned(),
        source,
    })?;
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| ReportError::Read {
            path: path.to_owned(),
            source,
        })?;
        let bad = |reason: String| ReportError::BadLine {
            path: path.to_owned(),
            line: i + 1,
            reason,
        };
        if line.trim().is_empty() {
            continue;
        }
        let obj = input::parse_object(&line).map_err(bad)?;
        each(i + 1, obj).map_err(bad)?;
    }
    Ok(())
}

/// Read the agent's JSON lines.
pub fn read_input(path: &Path) -> Result<Run, ReportError> {
    let mut run = Run::default();
    read_lines(path, |_, o| run.add(&o))?;
    if run.used == 0 && run.summary.is_none() {
        return Err(ReportError::Empty {
            path: path.to_owned(),
            lines: run.lines,
        });
    }
    Ok(run)
}

/// Read an allocator audit log.
pub fn read_audit(path: &Path) -> Result<Vec<Decision>, ReportError> {
    let mut out = Vec::new();
    read_lines(path, |_, o| {
        out.push(input::decision(&o)?);
        Ok(())
    })?;
    Ok(out)
}

/// Write `out/index.html` from `input` and the optional audit log; returns its path.
pub fn generate(input: &Path, audit: Option<&Path>, out: &Path) -> Result<PathBuf, ReportError> {
    let run = read_input(input)?;
    let decisions = audit.map(read_audit).transpose()?;
    let html = page::render(&run, input, audit.zip(decisions.as_deref()), &utc_now())?;
    std::fs::create_dir_all(out).map_err(|source| ReportError::Write {
        path: out.to_owned(),
        source,
    })?;
    let path = out.join("index.html");
    let tmp = out.join(".index.html.tmp");
    std::fs::write(&tmp, html)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|source| ReportError::Write {
            path: path.clone(),
            source,
        })?;
    Ok(path)
}

/// The `report` command: prints where the page is; returns the exit code.
pub fn cli(args: &ReportArgs) -> u8 {
    match generate(&args.input, args.audit.as_deref(), &args.out) {
        Ok(path) => {
            if args.json {
                println!("{}", serde_json::json!({ "report": path }));
            } else {
                println!("report: {}", path.display());
            }
            0
        }
        Err(e) => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                src = s.source();
            }
            eprintln!("error: {msg}");
            e.exit_code()
        }
    }
}

/// Now as `YYYY-MM-DD HH:MM:SS UTC`.
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Tmp(PathBuf);
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn tmp(role: &str) -> Tmp {
        let p = std::env::temp_dir().join(format!("shdt-report-{role}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("tmp dir");
        Tmp(p)
    }

    /// The page `generate` writes for `input` lines and `audit` log text (in `tmp(role)`).
    fn render(role: &str, input: &str, audit: &str) -> String {
        let d = tmp(role);
        let f = d.0.join("in.jsonl");
        std::fs::write(&f, input).expect("write");
        let log = d.0.join("audit.jsonl");
        std::fs::write(&log, audit).expect("write");
        let path = generate(&f, Some(&log), &d.0.join("out")).expect("report");
        std::fs::read_to_string(path).expect("read")
    }

    #[test]
    fn a_bad_line_names_its_number_and_exits_2() {
        let d = tmp("bad");
        let f = d.0.join("in.jsonl");
        std::fs::write(&f, "{\"t_s\":1,\"mirror\":{\"seen\":1}}\n\n{\"t_s\":2,\"mirror\":{\"seen\":2}}\nnot json\n")
            .expect("write");
        let e = generate(&f, None, &d.0.join("out")).expect_err("bad line");
        assert!(matches!(e, ReportError::BadLine { line: 4, .. }), "{e}");
        assert!(e.to_string().contains("in.jsonl:4:"), "{e}");
        assert_eq!(e.exit_code(), 2);
        assert!(!d.0.join("out").exists(), "nothing written on error");
        let e = generate(&d.0.join("missing.jsonl"), None, &d.0.join("out")).expect_err("missing");
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn a_page_without_forecasts_says_so() {
        let mut s = String::new();
        for i in 0..5 {
            s.push_str(&format!(
                "{{\"t_s\":{i},\"cgroups\":{{\"/cg/web\":{{\"cpu_seconds\":{}}}}},\"mirror\":{{\"seen\":{},\"cloned\":{}}}}}\n",
                i as f64 * 0.5,
                i * 100,
                i * 90
            ));
        }
        let html = render("nofc", &s, "{\"time_ms\":1000,\"cgroup\":\"web\",\"resource\":\"cpu\",\"old\":\"max\",\"new\":1.0,\"reason\":{\"kind\":\"forecast\"},\"rails\":[],\"applied\":true}\n");
        assert!(html.contains("No cpu forecasts in the input"), "{html}");
        assert!(html.contains("cgroup /cg/web"));
        assert!(html.contains("no wall-clock time"));
        assert!(html.matches("<svg").count() >= 3, "{html}");
        assert!(!html.contains("<script"));
    }

    #[test]
    fn an_empty_audit_log_is_a_run_without_decisions() {
        let html = render(
            "noaudit",
            "{\"t_s\":0,\"cgroups\":{\"/cg/web\":{\"cpu_seconds\":0.0}}}\n\
             {\"t_s\":1,\"cgroups\":{\"/cg/web\":{\"cpu_seconds\":0.5}}}\n",
            "",
        );
        assert!(html.contains("(0 decisions)"), "{html}");
        assert!(html.contains("cgroup /cg/web"));
    }

    #[test]
    fn utc_format() {
        assert_eq!(utc_now().len(), "2026-01-01 00:00:00 UTC".len());
    }
}
