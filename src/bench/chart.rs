//! The `--capacity` chart: latency percentiles against offered rate, one
//! point per step, both axes logarithmic (the growth phase doubles the rate,
//! and latency past the knee grows by orders of magnitude). Drawn with
//! plotters' SVG backend only, so no font or bitmap stack is built.

use plotters::prelude::*;

use super::capacity::{Outcome, Settings, Step};
use super::report::{dur, si};

const SIZE: (u32, u32) = (900, 560);

/// One percentile's curve: its name, colour and the value taken from a step.
struct Curve {
    name: &'static str,
    color: RGBColor,
    value: fn(&Step) -> f64,
}

const CURVES: [Curve; 3] = [
    Curve {
        name: "p50",
        color: RGBColor(31, 119, 180),
        value: |s| s.measured.p50,
    },
    Curve {
        name: "p99",
        color: RGBColor(214, 39, 40),
        value: |s| s.measured.p99,
    },
    Curve {
        name: "p99.9",
        color: RGBColor(148, 103, 189),
        value: |s| s.measured.p99_9,
    },
];

/// The chart as an SVG document; `title` names the target and load.
pub(crate) fn svg(
    title: &str,
    settings: &Settings,
    steps: &[Step],
    outcome: &Outcome,
) -> Result<String, String> {
    // One point per rate: the last run there (a retry carries the verdict).
    let mut sorted: Vec<&Step> = Vec::new();
    for s in steps {
        sorted.retain(|k| k.measured.offered != s.measured.offered);
        sorted.push(s);
    }
    sorted.sort_by(|a, b| a.measured.offered.total_cmp(&b.measured.offered));
    // The x axis is linear in log10(rate): plotters' log axis labels only
    // powers of ten, and a search often spans less than one decade.
    let (x_lo, x_hi) = bounds(sorted.iter().map(|s| s.measured.offered));
    let (x_lo, x_hi) = (x_lo.log10(), x_hi.log10());
    let ys = sorted
        .iter()
        .flat_map(|s| CURVES.iter().map(move |c| (c.value)(s)))
        .chain(settings.slos.iter().map(|s| s.limit_us));
    let (y_lo, y_hi) = bounds(ys);
    let mut buf = String::new();
    draw(
        &mut buf,
        title,
        settings,
        &sorted,
        outcome,
        (x_lo, x_hi),
        (y_lo, y_hi),
    )
    .map_err(|e| format!("drawing the chart failed: {e}"))?;
    Ok(buf)
}

/// "850/s", "12.5k/s": a rate as an axis label.
fn rate_label(r: f64) -> String {
    if r >= 1000.0 {
        format!("{}/s", si(r).replace(' ', ""))
    } else {
        format!("{r:.0}/s")
    }
}

/// A log axis range around the finite positive values, with some margin.
fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if hi <= 0.0 {
        return (1.0, 10.0);
    }
    (lo / 1.5, (hi * 1.5).max(lo * 2.0))
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn draw(
    buf: &mut String,
    title: &str,
    settings: &Settings,
    steps: &[&Step],
    outcome: &Outcome,
    x: (f64, f64),
    y: (f64, f64),
) -> DrawResult {
    let root = SVGBackend::with_string(buf, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(72)
        .build_cartesian_2d(x.0..x.1, (y.0..y.1).log_scale())?;
    chart
        .configure_mesh()
        .x_labels(8)
        .y_labels(8)
        .light_line_style(RGBColor(242, 242, 242))
        .x_desc("offered rate (requests/s, log)")
        .y_desc("latency (log)")
        .x_label_formatter(&|v| rate_label(10f64.powf(*v)))
        .y_label_formatter(&|v| dur(*v))
        .draw()?;
    let grey = RGBColor(90, 90, 90);
    for slo in &settings.slos {
        chart
            .draw_series(DashedLineSeries::new(
                [(x.0, slo.limit_us), (x.1, slo.limit_us)],
                6,
                4,
                grey.stroke_width(1),
            ))?
            .label(format!("SLO {} ≤ {}", slo.name, dur(slo.limit_us)))
            .legend(move |(px, py)| PathElement::new([(px, py), (px + 18, py)], grey));
    }
    if let Some(rate) = outcome.rate() {
        let green = RGBColor(44, 160, 44);
        chart
            .draw_series(LineSeries::new(
                [(rate.log10(), y.0), (rate.log10(), y.1)],
                green.stroke_width(2),
            ))?
            .label(format!("capacity {}/s", si(rate).trim_end()))
            .legend(move |(px, py)| PathElement::new([(px, py), (px + 18, py)], green));
    }
    for curve in &CURVES {
        let points: Vec<(f64, f64, bool)> = steps
            .iter()
            .map(|s| (s.measured.offered.log10(), (curve.value)(s), s.held()))
            .filter(|(_, v, _)| v.is_finite() && *v > 0.0)
            .collect();
        let color = curve.color;
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|&(r, v, _)| (r, v)),
                color.stroke_width(2),
            ))?
            .label(curve.name)
            .legend(move |(px, py)| PathElement::new([(px, py), (px + 18, py)], color));
        // Held steps are filled dots, broken ones crosses.
        chart.draw_series(points.iter().map(|&(r, v, held)| {
            if held {
                Circle::new((r, v), 4, color.filled()).into_dyn()
            } else {
                Cross::new((r, v), 5, color.stroke_width(2)).into_dyn()
            }
        }))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
