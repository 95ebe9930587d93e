//! Line charts as SVG text, drawn with plotters' SVG backend. Text becomes SVG `<text>`
//! elements (the browser picks the font), so nothing here reads a font file.

use plotters::prelude::*;

use super::ReportError;

pub const BLUE: RGBColor = RGBColor(31, 119, 180);
pub const ORANGE: RGBColor = RGBColor(230, 115, 0);
pub const RED: RGBColor = RGBColor(214, 39, 40);
pub const GREEN: RGBColor = RGBColor(44, 160, 44);
pub const PURPLE: RGBColor = RGBColor(148, 103, 189);
pub const GREY: RGBColor = RGBColor(120, 120, 120);
pub const BROWN: RGBColor = RGBColor(140, 86, 75);
/// Colours for numbered series (replicas).
pub const PALETTE: [RGBColor; 5] = [BLUE, ORANGE, GREEN, PURPLE, BROWN];

/// One thing drawn on a chart.
#[derive(Debug, Clone)]
pub enum Series {
    /// A polyline.
    Line {
        name: String,
        color: RGBColor,
        points: Vec<(f64, f64)>,
    },
    /// A filled band between two curves: (x, lower, upper).
    Band {
        name: String,
        color: RGBColor,
        points: Vec<(f64, f64, f64)>,
    },
    /// A step function: each value holds until the next point; None is a gap (unlimited).
    Step {
        name: String,
        color: RGBColor,
        points: Vec<(f64, Option<f64>)>,
        until: f64,
    },
    /// Markers: filled circles, or crosses when `filled` is false.
    Markers {
        name: String,
        color: RGBColor,
        points: Vec<(f64, f64)>,
        filled: bool,
    },
}

impl Series {
    fn is_empty(&self) -> bool {
        match self {
            Series::Line { points, .. } | Series::Markers { points, .. } => points.is_empty(),
            Series::Band { points, .. } => points.is_empty(),
            Series::Step { points, .. } => points.iter().all(|(_, v)| v.is_none()),
        }
    }

    fn extent(&self) -> Vec<(f64, f64)> {
        match self {
            Series::Line { points, .. } | Series::Markers { points, .. } => points.clone(),
            Series::Band { points, .. } => points
                .iter()
                .flat_map(|&(x, l, u)| [(x, l), (x, u)])
                .collect(),
            Series::Step { points, until, .. } => points
                .iter()
                .filter_map(|&(x, v)| v.map(|v| [(x, v), (*until, v)]))
                .flatten()
                .collect(),
        }
    }
}

/// A chart: title, axis descriptions, a y value formatter and its series.
#[derive(Debug, Clone)]
pub struct Chart {
    pub title: String,
    pub x_desc: String,
    pub y_desc: String,
    /// Integer labels (counts); otherwise the decimals follow the axis range.
    pub integer: bool,
    pub series: Vec<Series>,
}

impl Chart {
    pub fn new(title: impl Into<String>, x_desc: &str, y_desc: &str) -> Chart {
        Chart {
            title: title.into(),
            x_desc: x_desc.into(),
            y_desc: y_desc.into(),
            integer: false,
            series: Vec::new(),
        }
    }

    /// Whether anything would be drawn.
    pub fn has_data(&self) -> bool {
        self.series.iter().any(|s| !s.is_empty())
    }

    pub fn push(&mut self, s: Series) {
        if !s.is_empty() {
            self.series.push(s);
        }
    }
}

fn plot_err(chart: &str, e: impl std::fmt::Display) -> ReportError {
    ReportError::Plot {
        chart: chart.to_owned(),
        reason: e.to_string(),
    }
}

/// Render `chart` as an SVG document of `size` pixels.
pub fn render(chart: &Chart, size: (u32, u32)) -> Result<String, ReportError> {
    let pts: Vec<(f64, f64)> = chart
        .series
        .iter()
        .flat_map(Series::extent)
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    let (mut x0, mut x1) = pts
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &(x, _)| {
            (lo.min(x), hi.max(x))
        });
    if !x0.is_finite() || !x1.is_finite() {
        (x0, x1) = (0.0, 1.0);
    }
    if x1 - x0 < 1e-9 {
        x1 = x0 + 1.0;
    }
    let y_max = pts.iter().map(|&(_, y)| y).fold(0.0_f64, f64::max);
    let y_min = pts.iter().map(|&(_, y)| y).fold(0.0_f64, f64::min);
    // Headroom above the data for the legend (upper left), so it never hides a point.
    let entries = chart.series.len() as f64;
    let legend_frac = ((entries * 20.0 + 16.0) / (f64::from(size.1) - 110.0)).clamp(0.1, 0.6);
    let y1 = if y_max > 0.0 {
        y_max / (1.0 - legend_frac)
    } else {
        1.0
    };
    let y0 = if y_min < 0.0 { y_min * 1.12 } else { 0.0 };

    // Enough decimals to tell the ~10 tick labels apart.
    let decimals = if chart.integer && y1 - y0 >= 10.0 {
        0
    } else {
        (-((y1 - y0) / 10.0).log10().floor()).clamp(0.0, 6.0) as usize
    };
    let title = chart.title.as_str();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(title, e))?;
        let mut ctx = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 17).into_font())
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| plot_err(title, e))?;
        ctx.configure_mesh()
            .x_desc(chart.x_desc.as_str())
            .y_desc(chart.y_desc.as_str())
            .y_label_formatter(&|v| format!("{v:.decimals$}"))
            .x_label_formatter(&|v| format!("{v:.0}"))
            .light_line_style(RGBColor(238, 238, 238))
            .bold_line_style(RGBColor(215, 215, 215))
            .axis_desc_style(("sans-serif", 14))
            .label_style(("sans-serif", 12))
            .draw()
            .map_err(|e| plot_err(title, e))?;
        for s in &chart.series {
            draw_series(&mut ctx, s).map_err(|e| plot_err(title, e))?;
        }
        ctx.configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(|e| plot_err(title, e))?;
        root.present().map_err(|e| plot_err(title, e))?;
    }
    Ok(svg)
}

type Ctx<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

fn draw_series(
    ctx: &mut Ctx<'_, '_>,
    s: &Series,
) -> Result<(), DrawingAreaErrorKind<std::io::Error>> {
    match s {
        Series::Line {
            name,
            color,
            points,
        } => {
            let c = *color;
            // Grey is for context (e.g. all packets seen): wide and light, so a coloured line
            // on top of it stays visible.
            let style = if c == GREY {
                c.mix(0.45).stroke_width(6)
            } else {
                c.stroke_width(2)
            };
            ctx.draw_series(LineSeries::new(points.iter().copied(), style))?
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
        Series::Band {
            name,
            color,
            points,
        } => {
            let c = *color;
            let mut outline: Vec<(f64, f64)> = points.iter().map(|&(x, l, _)| (x, l)).collect();
            outline.extend(points.iter().rev().map(|&(x, _, u)| (x, u)));
            ctx.draw_series(std::iter::once(Polygon::new(outline, c.mix(0.22).filled())))?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 20, y + 5)], c.mix(0.35).filled())
                });
        }
        Series::Step {
            name,
            color,
            points,
            until,
        } => {
            let c = *color;
            let mut segments: Vec<Vec<(f64, f64)>> = Vec::new();
            let mut current: Vec<(f64, f64)> = Vec::new();
            for (i, &(x, v)) in points.iter().enumerate() {
                let next_x = points.get(i + 1).map_or(*until, |p| p.0);
                match v {
                    Some(v) => {
                        current.push((x, v));
                        current.push((next_x, v));
                    }
                    None => {
                        if !current.is_empty() {
                            segments.push(std::mem::take(&mut current));
                        }
                    }
                }
            }
            if !current.is_empty() {
                segments.push(current);
            }
            let style = c.stroke_width(3);
            let mut first = true;
            for seg in segments {
                let drawn = ctx.draw_series(LineSeries::new(seg, style))?;
                if first {
                    drawn.label(name.as_str()).legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3))
                    });
                    first = false;
                }
            }
        }
        Series::Markers {
            name,
            color,
            points,
            filled,
        } => {
            let c = *color;
            let filled = *filled;
            let drawn = if filled {
                ctx.draw_series(points.iter().map(|&p| Circle::new(p, 6, c.filled())))?
            } else {
                ctx.draw_series(points.iter().map(|&p| Circle::new(p, 6, c.stroke_width(2))))?
            };
            drawn.label(name.as_str()).legend(move |(x, y)| {
                let style = if filled {
                    c.filled()
                } else {
                    c.stroke_width(2)
                };
                Circle::new((x + 10, y), 5, style)
            });
        }
    }
    Ok(())
}
