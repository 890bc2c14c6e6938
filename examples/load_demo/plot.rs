//! The demo's plot: quota tokens billed per second as a share of the quota rate, one line per
//! stack, drawn with `plotters` as SVG.

use plotters::{element::DashedPathElement, prelude::*};

/// One line per stack, in the order of the legend.
const COLORS: [RGBColor; 6] = [
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x17, 0xbe, 0xcf),
];

const WIDTH: u32 = 960;
const HEIGHT: u32 = 480;
/// The legend's strip to the right of the chart, so it never covers a line.
const LEGEND_WIDTH: u32 = 170;

/// One stack's line: its name and (seconds since its start, billed tokens per second over
/// the quota rate) samples.
pub struct Line<'a> {
    pub name: &'a str,
    pub points: &'a [(f64, f64)],
}

/// The SVG document of `lines`, with `period_secs` (the quota period) in the caption.
pub fn svg(lines: &[Line<'_>], period_secs: f64) -> Result<String, Box<dyn std::error::Error>> {
    let t_max = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    // Room above the quota line and the highest sample.
    let y_max = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .fold(1.2, f64::max)
        * 1.05;
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)?;
        let (chart_area, legend_area) = root.split_horizontally(WIDTH - LEGEND_WIDTH);
        let mut chart = ChartBuilder::on(&chart_area)
            .caption(
                format!("Quota tokens billed per second (quota period {period_secs} s)"),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(65)
            .build_cartesian_2d(0.0..t_max, 0.0..y_max)?;
        chart
            .configure_mesh()
            .x_desc("time since the stack's first request (s)")
            .y_desc("billed tokens per second / quota rate")
            .x_label_formatter(&|t| format!("{t:.0}"))
            .y_label_formatter(&|v| format!("{:.0} %", v * 100.0))
            .light_line_style(WHITE.mix(0.0))
            .label_style(("sans-serif", 13))
            .draw()?;
        // The quota rate, dashed.
        chart.draw_series(DashedLineSeries::new(
            [(0.0, 1.0), (t_max, 1.0)],
            8,
            5,
            BLACK.stroke_width(1),
        ))?;
        for (i, line) in lines.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            chart.draw_series(LineSeries::new(
                line.points.iter().copied(),
                color.stroke_width(2),
            ))?;
        }

        // The legend, in its own strip.
        let entry = |row: usize| 40 + 22 * row as i32;
        legend_area.draw(&Text::new("stack", (12, entry(0) - 24), ("sans-serif", 14)))?;
        for (i, line) in lines.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let y = entry(i);
            legend_area.draw(&PathElement::new(
                vec![(12, y), (40, y)],
                color.stroke_width(2),
            ))?;
            legend_area.draw(&Text::new(line.name, (48, y - 7), ("sans-serif", 13)))?;
        }
        let y = entry(lines.len());
        legend_area.draw(&DashedPathElement::new(
            vec![(12, y), (40, y)],
            8,
            5,
            BLACK.stroke_width(1),
        ))?;
        legend_area.draw(&Text::new("quota rate", (48, y - 7), ("sans-serif", 13)))?;
        root.present()?;
    }
    Ok(out)
}
