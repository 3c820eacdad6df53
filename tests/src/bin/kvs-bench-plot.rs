//! kvs-bench-plot: draws one sweep of the scaling curves `tests/bench/curves.sh` records as an
//! SVG — throughput on the left, p99 latency on the right, one line per system and test against
//! the swept quantity. Both axes are logarithmic: the systems differ by orders of magnitude and
//! the sweeps grow geometrically, so a straight line means a constant growth rate.
//!
//! The input is the curves file (`{"points": [{"sweep", "x", "system", "test", "ops_per_sec",
//! "p99_ms", ..}, ..]}`), so a plot is regenerated from committed data without rerunning.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::Value;

/// Draws throughput and p99 latency against one swept quantity.
#[derive(Debug, Parser)]
#[command(name = "kvs-bench-plot")]
struct Args {
    /// The curves file written by tests/bench/curves.sh.
    #[arg(long)]
    data: PathBuf,
    /// Which sweep to draw: clients, value_size or keys.
    #[arg(long)]
    sweep: String,
    /// Where to write the SVG.
    #[arg(long)]
    out: PathBuf,
}

/// One measured point of a line.
struct Sample {
    x: f64,
    ops_per_sec: f64,
    p99_ms: f64,
}

/// The samples of one system and test (e.g. "etcd", "GET"), in order of x.
type Lines = BTreeMap<(String, String), Vec<Sample>>;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.data)
        .with_context(|| format!("reading {}", args.data.display()))?;
    let curves: Value = serde_json::from_str(&text).context("the curves file is not JSON")?;
    let lines = lines_of(&curves, &args.sweep)?;
    let root = SVGBackend::new(&args.out, (1100, 460)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(550);
    let x_desc = match args.sweep.as_str() {
        "value_size" => "value size (bytes)",
        "keys" => "keys stored",
        _ => "closed-loop clients",
    };
    let systems: Vec<&str> = lines.keys().map(|(system, _)| system.as_str()).collect();
    let panel = Panel {
        lines: &lines,
        systems: &systems,
        x_desc,
    };
    panel.draw(&left, "throughput", "ops/s", false, |s| s.ops_per_sec)?;
    panel.draw(&right, "p99 latency", "ms", true, |s| s.p99_ms)?;
    root.present()
        .with_context(|| format!("writing {}", args.out.display()))?;
    Ok(())
}

/// The points of `sweep`, grouped into lines.
fn lines_of(curves: &Value, sweep: &str) -> anyhow::Result<Lines> {
    let points = curves["points"]
        .as_array()
        .context("the curves file has no \"points\" list")?;
    let mut lines = Lines::new();
    for point in points.iter().filter(|p| p["sweep"] == sweep) {
        let text = |field: &str| point[field].as_str().map(str::to_owned);
        let number = |field: &str| point[field].as_f64();
        let (Some(system), Some(test), Some(x), Some(ops_per_sec), Some(p99_ms)) = (
            text("system"),
            text("test"),
            number("x"),
            number("ops_per_sec"),
            number("p99_ms"),
        ) else {
            anyhow::bail!("a point lacks system, test, x, ops_per_sec or p99_ms: {point}");
        };
        lines.entry((system, test)).or_default().push(Sample {
            x,
            ops_per_sec,
            p99_ms,
        });
    }
    anyhow::ensure!(!lines.is_empty(), "no points of the sweep {sweep:?}");
    for samples in lines.values_mut() {
        samples.sort_by(|a, b| a.x.total_cmp(&b.x));
    }
    Ok(lines)
}

/// What both panels share: the lines, the colour of each system, the x axis.
struct Panel<'a> {
    lines: &'a Lines,
    systems: &'a [&'a str],
    x_desc: &'a str,
}

impl Panel<'_> {
    fn draw(
        &self,
        area: &DrawingArea<SVGBackend<'_>, Shift>,
        caption: &str,
        y_desc: &str,
        legend: bool,
        y: impl Fn(&Sample) -> f64,
    ) -> anyhow::Result<()> {
        let samples = || self.lines.values().flatten();
        let x_range = bounds(samples().map(|s| s.x));
        let (low, high) = bounds(samples().map(&y).filter(|v| *v > 0.0));
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(
                (x_range.0..x_range.1).log_scale(),
                (low / 1.5..high * 1.5).log_scale(),
            )?;
        chart
            .configure_mesh()
            .x_desc(self.x_desc)
            .y_desc(y_desc)
            .x_label_formatter(&|v| short(*v))
            .y_label_formatter(&|v| short(*v))
            .draw()?;
        for ((system, test), samples) in self.lines {
            let index = self
                .systems
                .iter()
                .position(|s| s == system)
                .expect("every line's system is listed");
            let color = Palette99::pick(index).to_rgba();
            let points: Vec<(f64, f64)> = samples.iter().map(|s| (s.x, y(s))).collect();
            let style = color.stroke_width(2);
            let series = chart.draw_series(LineSeries::new(points.clone(), style))?;
            series.label(format!("{system} {test}"));
            if test == "GET" {
                series.legend(move |(x, y)| TriangleMarker::new((x + 10, y), 5, color.filled()));
                chart.draw_series(
                    points
                        .iter()
                        .map(|p| TriangleMarker::new(*p, 5, color.filled())),
                )?;
            } else {
                series.legend(move |(x, y)| Circle::new((x + 10, y), 4, color.filled()));
                chart.draw_series(points.iter().map(|p| Circle::new(*p, 4, color.filled())))?;
            }
        }
        if legend {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()?;
        }
        Ok(())
    }
}

/// The smallest and largest of `values`, apart enough to span a logarithmic axis.
fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (low, high) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if low > high {
        return (1.0, 10.0);
    }
    (low, high.max(low * 2.0))
}

/// 1, 16, 4k, 64k, 1M: tick labels that fit.
fn short(v: f64) -> String {
    match v {
        v if v >= 1e6 => format!("{}M", v / 1e6),
        v if v >= 1e3 => format!("{}k", v / 1e3),
        v if v >= 1.0 => format!("{v}"),
        v => format!("{v:.2}"),
    }
}
