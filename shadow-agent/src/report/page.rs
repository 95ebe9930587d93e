//! The HTML page: one section per cgroup (usage, forecast band, limits and decisions), then
//! the mirror's and the shadows' counters. Inline SVG and CSS only; no script.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use serde_json::Value;

use super::{
    chart::{self, Chart, Series},
    input::{same_cgroup, Decision, Resource, Run},
    ReportError,
};

const WIDTH: u32 = 1100;
const HEIGHT: u32 = 360;
const MIB: f64 = 1024.0 * 1024.0;
const X_DESC: &str = "seconds since the start of the input";

/// HTML-escape text.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// Per-second rates of a cumulative counter: (t, Δc/Δt) at the end of each interval; a
/// decrease (counter reset) gives no point.
pub fn rates(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    points
        .windows(2)
        .filter_map(|w| {
            let ((t0, c0), (t1, c1)) = (w[0], w[1]);
            (t1 > t0 && c1 >= c0).then(|| (t1, (c1 - c0) / (t1 - t0)))
        })
        .collect()
}

fn figure(out: &mut String, id: &str, chart: &Chart) -> Result<(), ReportError> {
    let svg = chart::render(chart, (WIDTH, HEIGHT))?;
    let _ = write!(
        out,
        "<figure class=\"plot\" id=\"{}\" title=\"{}\">\n{svg}\n</figure>\n",
        esc(id),
        esc(&chart.title)
    );
    Ok(())
}

fn note(out: &mut String, text: &str) {
    let _ = writeln!(out, "<p class=\"note\">{text}</p>");
}

fn fmt_value(v: &Value, r: Option<Resource>) -> String {
    match (v, r) {
        (Value::Number(n), Some(Resource::Memory)) => {
            format!("{:.1} MiB", n.as_f64().unwrap_or(0.0) / MIB)
        }
        (Value::Number(n), Some(Resource::Cpu)) => {
            format!("{:.3} cores", n.as_f64().unwrap_or(0.0))
        }
        (Value::String(s), _) => s.clone(),
        (Value::Null, _) => "–".into(),
        // A restore: control file → value written back.
        (Value::Object(files), _) => files
            .iter()
            .map(|(f, v)| {
                let name = f.rsplit('/').next().unwrap_or(f);
                format!(
                    "{name}={}",
                    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
        (v, _) => v.to_string(),
    }
}

fn resource_of(d: &Decision) -> Option<Resource> {
    Resource::ALL.into_iter().find(|r| r.key() == d.resource)
}

/// Where decisions sit on the x axis: the input's clock when its lines carry `time_ms`,
/// otherwise seconds since the first decision.
#[derive(Clone, Copy)]
enum Clock {
    Input { epoch_ms: f64 },
    Decisions { first_ms: f64 },
}

impl Clock {
    fn t(self, time_ms: f64) -> f64 {
        match self {
            Clock::Input { epoch_ms } => (time_ms - epoch_ms) / 1000.0,
            Clock::Decisions { first_ms } => (time_ms - first_ms) / 1000.0,
        }
    }
}

struct Cg<'a> {
    name: &'a str,
    series: Option<&'a super::input::CgroupSeries>,
    decisions: Vec<&'a Decision>,
}

fn scale(r: Resource) -> f64 {
    match r {
        Resource::Cpu => 1.0,
        Resource::Memory => MIB,
    }
}

/// One resource's chart of one cgroup. Returns the chart and notes about what is missing.
fn resource_chart(
    cg: &Cg<'_>,
    r: Resource,
    run: &Run,
    clock: Option<Clock>,
    with_usage: bool,
) -> (Chart, Vec<String>) {
    let s = scale(r);
    let (title, unit) = match r {
        Resource::Cpu => (format!("CPU — {}", cg.name), "CPU (cores)"),
        Resource::Memory => (format!("Memory — {}", cg.name), "memory (MiB)"),
    };
    let x_desc = match clock {
        Some(Clock::Decisions { .. }) => "seconds since the first allocation decision",
        _ => X_DESC,
    };
    let mut c = Chart::new(title, x_desc, unit);
    if r == Resource::Memory {
        c.integer = true;
    }
    let mut notes = Vec::new();
    if let Some(series) = cg.series.filter(|_| with_usage) {
        let usage = match r {
            Resource::Cpu => &series.cpu_cores,
            Resource::Memory => &series.memory_bytes,
        };
        c.push(Series::Line {
            name: format!("usage ({})", unit),
            color: chart::BLUE,
            points: usage.iter().map(|&(t, v)| (t, v / s)).collect(),
        });
        match series.forecasts.get(&r) {
            Some(f) if !f.is_empty() => {
                let band: Vec<_> = f
                    .iter()
                    .filter_map(|p| Some((p.at, p.lower? / s, p.upper? / s)))
                    .collect();
                let level = f
                    .iter()
                    .find_map(|p| p.level)
                    .map_or(String::new(), |l| format!(" {:.0}%", l * 100.0));
                if band.is_empty() {
                    notes.push(format!(
                        "The {} forecasts in the input carry no interval: only the point forecast is drawn.",
                        r.key()
                    ));
                }
                c.push(Series::Band {
                    name: format!("forecast interval{level}"),
                    color: chart::ORANGE,
                    points: band,
                });
                c.push(Series::Line {
                    name: "forecast (point)".into(),
                    color: chart::ORANGE,
                    points: f.iter().map(|p| (p.at, p.point / s)).collect(),
                });
            }
            _ => notes.push(format!(
                "No {} forecasts in the input for this cgroup (its lines carry no <code>forecast</code>/<code>forecasts.{}</code>), so no forecast or interval band is drawn.",
                r.key(),
                r.key()
            )),
        }
    }
    let until = run.t_last.unwrap_or(0.0);
    // Limits: the input's own, else the audit log's decisions.
    let input_limits = cg
        .series
        .filter(|_| with_usage)
        .and_then(|s| s.limits.get(&r))
        .filter(|l| !l.is_empty());
    let ds: Vec<&Decision> = cg
        .decisions
        .iter()
        .copied()
        .filter(|d| d.resource == r.key())
        .collect();
    if let Some(l) = input_limits {
        c.push(Series::Step {
            name: "limit".into(),
            color: chart::RED,
            points: l.iter().map(|&(t, v)| (t, v.map(|v| v / s))).collect(),
            until,
        });
    }
    if let Some(clock) = clock.filter(|_| !ds.is_empty()) {
        let t_end = ds.iter().map(|d| clock.t(d.time_ms)).fold(until, f64::max);
        if input_limits.is_none() {
            let mut pts = vec![(clock.t(ds[0].time_ms), ds[0].old.as_f64().map(|v| v / s))];
            for d in ds.iter().filter(|d| d.applied) {
                pts.push((clock.t(d.time_ms), d.new.as_f64().map(|v| v / s)));
            }
            if pts.iter().any(|(_, v)| v.is_none()) {
                notes.push(format!(
                    "The {} limit was unlimited (\"max\") for part of the time: no line is drawn there.",
                    r.key()
                ));
            }
            c.push(Series::Step {
                name: "limit (from the audit log)".into(),
                color: chart::RED,
                points: pts,
                until: t_end,
            });
        }
        let marks = |applied: bool| -> Vec<(f64, f64)> {
            ds.iter()
                .filter(|d| d.applied == applied)
                .filter_map(|d| Some((clock.t(d.time_ms), d.new.as_f64()? / s)))
                .collect()
        };
        c.push(Series::Markers {
            name: "decision applied".into(),
            color: chart::GREEN,
            points: marks(true),
            filled: true,
        });
        c.push(Series::Markers {
            name: "decision not applied (dry run / rail)".into(),
            color: chart::PURPLE,
            points: marks(false),
            filled: false,
        });
    }
    if input_limits.is_none() && ds.is_empty() {
        notes.push(format!(
            "No {} limit in the input and no {} decision for this cgroup in the audit log: no limit line is drawn.",
            r.key(),
            r.key()
        ));
    }
    (c, notes)
}

fn decisions_table(out: &mut String, ds: &[&Decision], clock: Option<Clock>) {
    if ds.is_empty() {
        return;
    }
    out.push_str("<table class=\"decisions\"><thead><tr><th>t (s)</th><th>resource</th><th>old</th><th>new</th><th>reason</th><th>rails</th><th>forecast [interval]</th><th>applied</th></tr></thead><tbody>\n");
    // Runs of identical decisions that were not applied (held by a rail, dry run) are one
    // row: an allocator held at its maximum decides the same thing every interval.
    let key = |d: &Decision| {
        (
            d.applied,
            d.resource.clone(),
            d.old.to_string(),
            d.new.to_string(),
            d.reason.clone(),
            d.rails.clone(),
        )
    };
    let mut i = 0;
    while i < ds.len() {
        let d = ds[i];
        let mut j = i + 1;
        while !d.applied && j < ds.len() && key(ds[j]) == key(d) {
            j += 1;
        }
        let last = ds[j - 1];
        let n = j - i;
        i = j;
        let r = resource_of(d);
        let t = match clock {
            None => String::from("?"),
            Some(c) if n > 1 => format!("{:.1} – {:.1}", c.t(d.time_ms), c.t(last.time_ms)),
            Some(c) => format!("{:.1}", c.t(d.time_ms)),
        };
        let mut reason = esc(&d.reason);
        if !d.signals.is_empty() {
            let _ = write!(reason, " ({})", esc(&d.signals.join(", ")));
        }
        let fc = match (d.forecast, d.interval) {
            (Some(p), Some((l, u))) => format!(
                "{} [{} – {}]",
                fmt_value(&p.into(), r),
                fmt_value(&l.into(), r),
                fmt_value(&u.into(), r)
            ),
            (Some(p), None) => fmt_value(&p.into(), r),
            _ => "–".into(),
        };
        let applied = match (d.applied, d.dry_run, &d.error) {
            (_, _, Some(e)) => format!("failed: {}", esc(e)),
            (true, _, _) => "yes".into(),
            (false, true, _) => "no (dry run)".into(),
            (false, false, _) => "no".into(),
        };
        let applied = if n > 1 {
            format!("{applied} ({n} intervals)")
        } else {
            applied
        };
        let _ = writeln!(
            out,
            "<tr><td>{t}</td><td>{}</td><td>{}</td><td>{}</td><td>{reason}</td><td>{}</td><td>{}</td><td>{applied}</td></tr>",
            esc(&d.resource),
            esc(&fmt_value(&d.old, r)),
            esc(&fmt_value(&d.new, r)),
            esc(&d.rails.join(", ")),
            esc(&fc),
        );
    }
    out.push_str("</tbody></table>\n");
}

fn slug(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

const STYLE: &str = "body{font-family:sans-serif;margin:24px;color:#222;max-width:1140px}\
h1{margin-bottom:4px}h2{border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:36px}\
table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;font-size:13px}\
table.decisions td:nth-child(-n+4),td.num{white-space:nowrap}\
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}\
figure{margin:12px 0}figcaption{font-size:13px;color:#555}p.note{background:#fff8e1;border-left:4px solid #f0b400;padding:6px 10px;font-size:14px}\
svg{display:block}";

/// The whole page.
pub fn render(
    run: &Run,
    input: &Path,
    audit: Option<(&Path, &[Decision])>,
    generated: &str,
) -> Result<String, ReportError> {
    let decisions: &[Decision] = audit.map_or(&[], |(_, d)| d);
    let clock = match (run.epoch_ms, decisions.first()) {
        (Some(epoch_ms), _) => Some(Clock::Input { epoch_ms }),
        (None, Some(_)) => Some(Clock::Decisions {
            first_ms: decisions
                .iter()
                .map(|d| d.time_ms)
                .fold(f64::INFINITY, f64::min),
        }),
        (None, None) => None,
    };
    let aligned = matches!(clock, Some(Clock::Input { .. }));

    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Shadow report — {}</title><style>{STYLE}</style></head><body>\n<h1>Shadow report</h1>\n",
        esc(&input.display().to_string())
    );
    out.push_str("<table class=\"meta\" id=\"meta\"><tbody>\n");
    let span = match (run.t_first, run.t_last) {
        (Some(a), Some(b)) => format!("{a:.1} s – {b:.1} s ({:.1} s)", b - a),
        _ => "–".into(),
    };
    let formats = if run.formats.is_empty() {
        "none recognised".to_string()
    } else {
        run.formats.join(", ")
    };
    let audit_row = match audit {
        Some((p, d)) => format!("{} ({} decisions)", esc(&p.display().to_string()), d.len()),
        None => "none given (<code>--audit</code>)".into(),
    };
    for (k, v) in [
        ("input", esc(&input.display().to_string())),
        ("formats", esc(&formats)),
        (
            "lines",
            format!("{} read, {} used for the plots", run.lines, run.used),
        ),
        ("time span", span),
        ("cgroups", run.cgroups.len().to_string()),
        ("audit log", audit_row),
        ("generated", esc(generated)),
    ] {
        let _ = writeln!(out, "<tr><th>{k}</th><td>{v}</td></tr>");
    }
    out.push_str("</tbody></table>\n");
    if !decisions.is_empty() && !aligned {
        note(&mut out, "The input lines carry no wall-clock time (<code>time_ms</code>), so allocation decisions cannot be placed on the input's time axis: they are drawn on their own charts, in seconds since the first decision.");
    }

    // ---- per cgroup
    let mut cgs: Vec<Cg<'_>> = run
        .cgroups
        .iter()
        .map(|(name, s)| Cg {
            name,
            series: Some(s),
            decisions: Vec::new(),
        })
        .collect();
    for d in decisions {
        if let Some(cg) = cgs
            .iter_mut()
            .find(|c| c.series.is_some() && same_cgroup(c.name, &d.cgroup))
        {
            cg.decisions.push(d);
        } else if let Some(cg) = cgs.iter_mut().find(|c| c.name == d.cgroup) {
            cg.decisions.push(d);
        } else {
            cgs.push(Cg {
                name: &d.cgroup,
                series: None,
                decisions: vec![d],
            });
        }
    }
    out.push_str("<h2 id=\"cgroups\">Tracked cgroups</h2>\n");
    if cgs.is_empty() {
        note(&mut out, "The input has no per-cgroup data.");
    }
    for (i, cg) in cgs.iter().enumerate() {
        let _ = writeln!(
            out,
            "<section class=\"cgroup\" id=\"cgroup-{i}\"><h3 class=\"cgroup-title\">cgroup {}</h3>",
            esc(cg.name)
        );
        if cg.series.is_none() {
            note(
                &mut out,
                "This cgroup appears only in the audit log, not in the input.",
            );
        }
        for r in Resource::ALL {
            let has_usage = cg.series.is_some_and(|s| match r {
                Resource::Cpu => !s.cpu_cores.is_empty() || s.forecasts.contains_key(&r),
                Resource::Memory => !s.memory_bytes.is_empty() || s.forecasts.contains_key(&r),
            });
            let has_decisions = cg.decisions.iter().any(|d| d.resource == r.key());
            let has_limits = cg.series.is_some_and(|s| {
                s.limits
                    .get(&r)
                    .is_some_and(|l| l.iter().any(|(_, v)| v.is_some()))
            });
            if !has_usage && !has_decisions && !has_limits {
                if r == Resource::Memory {
                    continue; // memory is optional in every input format
                }
                note(&mut out, "No CPU usage for this cgroup in the input.");
                continue;
            }
            let (c, notes) = resource_chart(cg, r, run, clock.filter(|_| aligned), true);
            if c.has_data() {
                figure(
                    &mut out,
                    &format!("cg{i}-{}-{}", r.key(), slug(cg.name)),
                    &c,
                )?;
            }
            for n in notes {
                note(&mut out, &n);
            }
            if has_decisions && !aligned {
                let (c, _) = resource_chart(cg, r, run, clock, false);
                let mut c = c;
                c.title = format!("{} limit and decisions — {}", r.key(), cg.name);
                figure(&mut out, &format!("cg{i}-{}-limits", r.key()), &c)?;
            }
        }
        decisions_table(&mut out, &cg.decisions, clock);
        out.push_str("</section>\n");
    }

    // ---- mirror and shadows
    out.push_str("<h2 id=\"counters-title\">Mirror and shadow counters</h2>\n");
    let mut names: Vec<&str> = Vec::new();
    for (_, c) in &run.mirror {
        for k in c.keys() {
            if !names.contains(&k.as_str()) {
                names.push(k);
            }
        }
    }
    if run.mirror.is_empty() {
        note(
            &mut out,
            "The input has no mirror counters (no <code>mirror</code> object in its lines).",
        );
    } else {
        let mut c = Chart::new("Mirror: packets per second", X_DESC, "packets/s");
        c.integer = true;
        for (key, label, color) in [
            (
                "seen",
                "seen by the mirror (all packets on the interface)",
                chart::GREY,
            ),
            ("cloned", "cloned to the shadow", chart::BLUE),
            ("clone_failed", "clone failures", chart::RED),
        ] {
            let cum: Vec<(f64, f64)> = run
                .mirror
                .iter()
                .filter_map(|(t, m)| Some((*t, *m.get(key)?)))
                .collect();
            c.push(Series::Line {
                name: label.into(),
                color,
                points: rates(&cum),
            });
        }
        figure(&mut out, "mirror-rates", &c)?;
    }
    if run.replicas.is_empty() {
        note(
            &mut out,
            "The input has no shadow replica counters (no <code>shadow</code> array in its lines).",
        );
    } else {
        let mut dropped = Chart::new(
            "Shadow replicas: packets discarded per second (everything a replica sends)",
            X_DESC,
            "packets/s",
        );
        dropped.integer = true;
        let mut refused = Chart::new(
            "Shadow replicas: refused connects and sends (cumulative)",
            X_DESC,
            "attempts",
        );
        refused.integer = true;
        for (i, (name, pts)) in run.replicas.iter().enumerate() {
            let color = chart::PALETTE[i % chart::PALETTE.len()];
            let cum: Vec<(f64, f64)> = pts
                .iter()
                .map(|(t, p)| (*t, p.tx_dropped_packets))
                .collect();
            dropped.push(Series::Line {
                name: format!("{name}: discarded"),
                color,
                points: rates(&cum),
            });
            refused.push(Series::Line {
                name: format!("{name}: connects refused"),
                color,
                points: pts.iter().map(|(t, p)| (*t, p.connect_refused)).collect(),
            });
            refused.push(Series::Markers {
                name: format!("{name}: sends refused"),
                color,
                points: pts.iter().map(|(t, p)| (*t, p.sendmsg_refused)).collect(),
                filled: false,
            });
        }
        figure(&mut out, "shadow-discarded", &dropped)?;
        if run
            .replicas
            .values()
            .flatten()
            .any(|(_, p)| p.connect_refused > 0.0 || p.sendmsg_refused > 0.0)
        {
            figure(&mut out, "shadow-refused", &refused)?;
        } else {
            note(
                &mut out,
                "No replica had a connect or send refused during the input.",
            );
        }
    }

    // The counters table: totals at the end of the input.
    out.push_str("<table id=\"counters\" class=\"counters\"><thead><tr><th>counter</th><th>value at the end of the input</th><th>per second over the input</th></tr></thead><tbody>\n");
    let per_s = |first: Option<f64>, last: f64, t0: f64, t1: f64| -> String {
        match first {
            Some(f) if t1 > t0 && last >= f => format!("{:.1}", (last - f) / (t1 - t0)),
            _ => "–".into(),
        }
    };
    if let (Some((t0, first)), Some((t1, last))) = (run.mirror.first(), run.mirror.last()) {
        for k in &names {
            let v = last.get(*k).copied().unwrap_or(0.0);
            let _ = writeln!(
                out,
                "<tr><td>mirror.{}</td><td class=\"num\">{v:.0}</td><td class=\"num\">{}</td></tr>",
                esc(k),
                per_s(first.get(*k).copied(), v, *t0, *t1)
            );
        }
    }
    for (name, pts) in &run.replicas {
        let (Some((t0, first)), Some((t1, last))) = (pts.first(), pts.last()) else {
            continue;
        };
        for (k, a, b) in [
            (
                "discarded packets",
                first.tx_dropped_packets,
                last.tx_dropped_packets,
            ),
            (
                "connects refused",
                first.connect_refused,
                last.connect_refused,
            ),
            ("sends refused", first.sendmsg_refused, last.sendmsg_refused),
        ] {
            let _ = writeln!(
                out,
                "<tr><td>{}: {k}</td><td class=\"num\">{b:.0}</td><td class=\"num\">{}</td></tr>",
                esc(name),
                per_s(Some(a), b, *t0, *t1)
            );
        }
        if let Some(r) = last.restarts {
            let _ = writeln!(
                out,
                "<tr><td>{}: restarts</td><td class=\"num\">{r:.0}</td><td class=\"num\">–</td></tr>",
                esc(name)
            );
        }
        if let Some(running) = last.running {
            let _ = writeln!(
                out,
                "<tr><td>{}: running at the end</td><td class=\"num\">{}</td><td class=\"num\">–</td></tr>",
                esc(name),
                if running { "yes" } else { "no" }
            );
        }
    }
    if let Some(s) = &run.summary {
        let mut rows: BTreeMap<&str, String> = BTreeMap::new();
        for (k, v) in s {
            if let Some(n) = v.as_f64() {
                rows.insert(k, format!("{n:.3}"));
            }
        }
        for (k, v) in rows {
            let _ = writeln!(
                out,
                "<tr><td>summary.{}</td><td class=\"num\">{v}</td><td class=\"num\">–</td></tr>",
                esc(k)
            );
        }
    }
    out.push_str("</tbody></table>\n");
    if !run.refused.is_empty() {
        out.push_str("<h3>Refused destinations</h3>\n<table id=\"refused\"><thead><tr><th>replica</th><th>destination</th><th>attempts</th></tr></thead><tbody>\n");
        for ((replica, dest), n) in &run.refused {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td><td class=\"num\">{n:.0}</td></tr>",
                esc(replica),
                esc(dest)
            );
        }
        out.push_str("</tbody></table>\n");
    }
    out.push_str("<p class=\"foot\">Written by <code>shadow-agent report</code>. Usage is CPU time per wall second (1.0 = one CPU) over each interval; rates are differences of cumulative counters over the interval.</p>\n</body></html>\n");
    Ok(out)
}
