//! Traces in the long CSV format `series_id,timestamp_s,<metric columns>` and their resampling
//! to an even grid.
//!
//! Parsing: the first line is the header; `series_id`, `timestamp_s` and the requested metric
//! column must be present (any order, other columns ignored). Fields are split on commas
//! (surrounding double quotes are removed; quoted commas are not supported). An empty metric
//! cell is a missing sample. A timestamp or metric value that is not a finite number is an
//! error naming the line and the column, never skipped. Rows of one series need not be
//! contiguous or sorted.
//!
//! Resampling, per series:
//! 1. the samples are sorted by time and the step is the **median** of the positive
//!    differences between consecutive timestamps;
//! 2. each sample goes to the nearest point of the grid `t0 + k·step` (`t0` = first timestamp);
//!    samples landing on the same point are averaged (so jitter of up to half a step is
//!    absorbed);
//! 3. runs of empty grid points of at most [`Resample::max_gap`] steps are filled by linear
//!    interpolation between their neighbours; a longer run splits the series, and the
//!    longest piece is kept (the most recent one on a tie). Interpolated and dropped points
//!    are counted per series.
//!
//! A series with fewer than two distinct timestamps or with no usable value is skipped with the
//! reason.

use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
};

/// Why a trace file could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("reading {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: the file is empty (no header line)")]
    Empty { path: PathBuf },
    #[error("{path}: no column {column:?} in the header (columns: {available})")]
    MissingColumn {
        path: PathBuf,
        column: String,
        available: String,
    },
    #[error("{path}:{line}: column {column:?} holds {value:?}, not a finite number")]
    NonNumeric {
        path: PathBuf,
        line: usize,
        column: String,
        value: String,
    },
    #[error("{path}:{line}: {got} fields, the header has {expected}")]
    ShortRow {
        path: PathBuf,
        line: usize,
        expected: usize,
        got: usize,
    },
    #[error("{path}:{line}: empty series_id")]
    EmptyId { path: PathBuf, line: usize },
}

/// Why one series was left out (the rest of the file is still used).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SkipReason {
    /// No non-empty value of the metric.
    NoValues,
    /// Fewer than two distinct timestamps: no step can be derived.
    NoStep,
    /// Shorter than what the evaluation needs.
    TooShort { needed: usize, got: usize },
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::NoValues => write!(f, "no values for the metric"),
            SkipReason::NoStep => write!(f, "fewer than two distinct timestamps"),
            SkipReason::TooShort { needed, got } => write!(
                f,
                "{got} samples after resampling, needs {needed} (window + horizon)"
            ),
        }
    }
}

/// A series left out, and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Skipped {
    pub id: String,
    pub reason: SkipReason,
}

/// An evenly spaced series.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub id: String,
    /// Grid step in seconds (the median sampling interval).
    pub step_s: f64,
    /// Time of the first kept grid point, in the file's timestamp unit.
    pub start_s: f64,
    pub values: Vec<f64>,
    /// Grid points filled by interpolation.
    pub imputed: usize,
    /// Grid points left out because a longer gap split the series.
    pub dropped: usize,
}

/// A metric of every series in a file.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub metric: String,
    pub series: Vec<Series>,
    pub skipped: Vec<Skipped>,
}

/// Resampling parameters.
#[derive(Debug, Clone, Copy)]
pub struct Resample {
    /// Longest run of missing grid points that is interpolated rather than splitting.
    pub max_gap: usize,
}

impl Default for Resample {
    fn default() -> Self {
        Self { max_gap: 6 }
    }
}

/// Reads `path` and resamples `metric` of every series in it.
pub fn load_csv(path: &Path, metric: &str, resample: Resample) -> Result<Dataset, DataError> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse_csv(&text, path, metric, resample)
}

fn field(s: &str) -> &str {
    let s = s.trim();
    s.strip_prefix('"')
        .and_then(|x| x.strip_suffix('"'))
        .unwrap_or(s)
}

/// Parses CSV text (`path` only names it in errors).
pub fn parse_csv(
    text: &str,
    path: &Path,
    metric: &str,
    resample: Resample,
) -> Result<Dataset, DataError> {
    let mut lines = text.lines().enumerate();
    let header: Vec<&str> = loop {
        match lines.next() {
            None => {
                return Err(DataError::Empty {
                    path: path.to_owned(),
                })
            }
            Some((_, l)) if l.trim().is_empty() => continue,
            Some((_, l)) => break l.split(',').map(field).collect(),
        }
    };
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .ok_or_else(|| DataError::MissingColumn {
                path: path.to_owned(),
                column: name.to_owned(),
                available: header.join(","),
            })
    };
    let (id_col, ts_col, m_col) = (col("series_id")?, col("timestamp_s")?, col(metric)?);
    let number = |line: usize, column: &str, raw: &str| -> Result<f64, DataError> {
        match raw.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(v),
            _ => Err(DataError::NonNumeric {
                path: path.to_owned(),
                line,
                column: column.to_owned(),
                value: raw.to_owned(),
            }),
        }
    };

    let mut order: Vec<String> = Vec::new();
    let mut rows: HashMap<String, (Vec<(f64, f64)>, usize)> = HashMap::new();
    for (i, l) in lines {
        if l.trim().is_empty() {
            continue;
        }
        let line = i + 1;
        let fields: Vec<&str> = l.split(',').map(field).collect();
        if fields.len() != header.len() {
            return Err(DataError::ShortRow {
                path: path.to_owned(),
                line,
                expected: header.len(),
                got: fields.len(),
            });
        }
        let id = fields[id_col];
        if id.is_empty() {
            return Err(DataError::EmptyId {
                path: path.to_owned(),
                line,
            });
        }
        let ts = number(line, "timestamp_s", fields[ts_col])?;
        let entry = match rows.get_mut(id) {
            Some(e) => e,
            None => {
                order.push(id.to_owned());
                rows.entry(id.to_owned()).or_default()
            }
        };
        entry.1 += 1;
        let raw = fields[m_col];
        if !raw.is_empty() {
            entry.0.push((ts, number(line, metric, raw)?));
        }
    }

    let mut series = Vec::new();
    let mut skipped = Vec::new();
    for id in order {
        let (samples, _) = rows.remove(&id).unwrap_or_default();
        match resample_series(&id, samples, resample) {
            Ok(s) => series.push(s),
            Err(reason) => skipped.push(Skipped { id, reason }),
        }
    }
    Ok(Dataset {
        metric: metric.to_owned(),
        series,
        skipped,
    })
}

/// Resamples one series' `(timestamp, value)` samples; see the module docs.
pub fn resample_series(
    id: &str,
    mut samples: Vec<(f64, f64)>,
    resample: Resample,
) -> Result<Series, SkipReason> {
    if samples.is_empty() {
        return Err(SkipReason::NoValues);
    }
    samples.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut diffs: Vec<f64> = samples
        .windows(2)
        .map(|w| w[1].0 - w[0].0)
        .filter(|d| *d > 0.0)
        .collect();
    if diffs.is_empty() {
        return Err(SkipReason::NoStep);
    }
    super::sort_floats(&mut diffs);
    let step = super::quantile_sorted(&diffs, 0.5);
    let t0 = samples[0].0;
    let last = ((samples[samples.len() - 1].0 - t0) / step).round() as usize;
    let mut sum = vec![0.0; last + 1];
    let mut cnt = vec![0u32; last + 1];
    for &(t, v) in &samples {
        let k = (((t - t0) / step).round() as usize).min(last);
        sum[k] += v;
        cnt[k] += 1;
    }
    let grid: Vec<Option<f64>> = sum
        .iter()
        .zip(&cnt)
        .map(|(s, &c)| (c > 0).then(|| s / c as f64))
        .collect();

    // Pieces separated by gaps longer than max_gap; shorter gaps interpolated.
    let mut pieces: Vec<(usize, Vec<f64>, usize)> = Vec::new(); // (start index, values, imputed)
    let mut cur: (usize, Vec<f64>, usize) = (0, Vec::new(), 0);
    let mut i = 0;
    while i < grid.len() {
        match grid[i] {
            Some(v) => {
                if cur.1.is_empty() {
                    cur.0 = i;
                }
                cur.1.push(v);
                i += 1;
            }
            None => {
                let gap_end = (i..grid.len())
                    .find(|&j| grid[j].is_some())
                    .unwrap_or(grid.len());
                let gap = gap_end - i;
                let prev = cur.1.last().copied();
                match (prev, grid.get(gap_end).copied().flatten()) {
                    (Some(a), Some(b)) if gap <= resample.max_gap => {
                        for j in 1..=gap {
                            cur.1.push(a + (b - a) * j as f64 / (gap + 1) as f64);
                        }
                        cur.2 += gap;
                    }
                    _ => {
                        if !cur.1.is_empty() {
                            pieces.push(std::mem::take(&mut cur));
                        }
                    }
                }
                i = gap_end;
            }
        }
    }
    if !cur.1.is_empty() {
        pieces.push(cur);
    }
    let total_observed = grid.iter().filter(|g| g.is_some()).count();
    let best = pieces
        .into_iter()
        .reduce(|a, b| if b.1.len() >= a.1.len() { b } else { a })
        .ok_or(SkipReason::NoValues)?;
    let kept_observed = best.1.len() - best.2;
    Ok(Series {
        id: id.to_owned(),
        step_s: step,
        start_s: t0 + best.0 as f64 * step,
        values: best.1,
        imputed: best.2,
        dropped: total_observed - kept_observed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, metric: &str) -> Result<Dataset, DataError> {
        parse_csv(text, Path::new("t.csv"), metric, Resample::default())
    }

    #[test]
    fn jitter_and_short_gaps_are_resampled() {
        // Step ~300 with jitter, one missing row (t=900) and one empty cell (t=1500).
        let csv = "series_id,timestamp_s,cpu_pct\n\
                   a,0,1\na,302,2\na,598,3\na,1203,5\na,1500,\na,1799,7\na,2101,8\n\
                   a,2400,9\na,2702,10\nb,0,4\nb,300,4\n";
        let d = parse(csv, "cpu_pct").unwrap();
        assert_eq!(d.series.len(), 2);
        let a = &d.series[0];
        assert_eq!(a.id, "a");
        assert!((295.0..=305.0).contains(&a.step_s), "step {}", a.step_s);
        assert_eq!(
            a.values,
            vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
        );
        assert_eq!(a.imputed, 2);
        assert_eq!(a.dropped, 0);
    }

    #[test]
    fn long_gaps_split_and_the_longest_piece_is_kept() {
        let mut samples: Vec<(f64, f64)> = (0..5).map(|i| (i as f64 * 10.0, 1.0)).collect();
        samples.extend((20..30).map(|i| (i as f64 * 10.0, 2.0)));
        let s = resample_series("x", samples, Resample { max_gap: 3 }).unwrap();
        assert_eq!(s.values, vec![2.0; 10]);
        assert_eq!(s.start_s, 200.0);
        assert_eq!(s.dropped, 5);
    }

    #[test]
    fn bad_input_is_named() {
        let e = parse("series_id,timestamp_s,cpu\na,0,1\n", "mem").unwrap_err();
        assert!(matches!(e, DataError::MissingColumn { ref column, .. } if column == "mem"));
        assert!(e.to_string().contains("series_id,timestamp_s,cpu"));
        let e = parse("series_id,timestamp_s,cpu\na,0,1\na,300,high\n", "cpu").unwrap_err();
        assert!(
            matches!(e, DataError::NonNumeric { line: 3, ref value, .. } if value == "high"),
            "{e}"
        );
        let e = parse("series_id,timestamp_s,cpu\na,zero,1\n", "cpu").unwrap_err();
        assert!(matches!(e, DataError::NonNumeric { line: 2, .. }));
        let e = parse("series_id,timestamp_s,cpu\na,0\n", "cpu").unwrap_err();
        assert!(matches!(e, DataError::ShortRow { line: 2, .. }));
        assert!(matches!(parse("", "cpu"), Err(DataError::Empty { .. })));
    }

    #[test]
    fn unusable_series_are_skipped_with_a_reason() {
        let d = parse(
            "series_id,timestamp_s,cpu\na,0,\na,300,\nb,0,1\nc,0,1\nc,300,2\n",
            "cpu",
        )
        .unwrap();
        assert_eq!(d.series.len(), 1);
        assert_eq!(
            d.skipped,
            vec![
                Skipped {
                    id: "a".into(),
                    reason: SkipReason::NoValues
                },
                Skipped {
                    id: "b".into(),
                    reason: SkipReason::NoStep
                }
            ]
        );
    }
}
