//! The PNG chart of a comparison: CPU per packet and p99 round-trip time against the
//! offered load, client-to-client mode (the table with every contender). Text is drawn
//! with DejaVu Sans embedded in the binary (Bitstream Vera license, see
//! bench/assets/DejaVuSans-LICENSE.txt), so no system font is needed.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::report::{Report, Row};

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

pub fn draw(path: &Path, report: &Report) -> anyhow::Result<()> {
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    let root = BitMapBackend::new(path, (1200, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(600);
    let mode = "client-to-client";
    let names: Vec<String> = {
        let mut v: Vec<String> = report
            .rows
            .iter()
            .filter(|r| r.mode == mode)
            .map(|r| r.contender.clone())
            .collect();
        v.dedup();
        v
    };
    type Get = fn(&Row) -> Option<f64>;
    let panels: [(&DrawingArea<BitMapBackend<'_>, _>, &str, Get); 2] = [
        (&left, "server CPU ns per forwarded packet", |r| {
            r.cpu_ns_per_packet
        }),
        (&right, "p99 round-trip time (us)", |r| Some(r.p99_us)),
    ];
    let xmax = report
        .rows
        .iter()
        .filter(|r| r.mode == mode)
        .map(|r| r.offered_pps)
        .fold(1.0f64, f64::max)
        * 1.05;
    for (area, title, get) in panels {
        let ymax = report
            .rows
            .iter()
            .filter(|r| r.mode == mode)
            .filter_map(get)
            .fold(1.0f64, f64::max)
            * 1.15;
        let mut ch = ChartBuilder::on(area)
            .caption(format!("{title}, {mode}"), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..xmax, 0f64..ymax)?;
        ch.configure_mesh()
            .x_desc("offered round trips/s")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .label_style(("sans-serif", 12))
            .draw()?;
        for (i, name) in names.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let pts: Vec<(f64, f64)> = report
                .rows
                .iter()
                .filter(|r| r.mode == mode && &r.contender == name)
                .filter_map(|r| get(r).map(|y| (r.offered_pps, y)))
                .collect();
            ch.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            ch.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
        }
        ch.configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 12))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
