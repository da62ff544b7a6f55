//! `--plot front.svg|front.png`: the Pareto front as a picture (plotters).
//!
//! The first objective along x, the second along y (linear scales), each
//! design on the front a point, the front drawn as a staircase. Text uses an embedded font (DejaVu Sans Mono,
//! `fonts/DejaVu-LICENSE.txt`), so no system font is needed.

use super::objective::Objective;
use super::record::{DesignRecord, SearchResult};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

static FONT: &[u8] = include_bytes!("fonts/DejaVuSansMono.ttf");

fn register_font() -> Result<(), String> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
            .map_err(|_| "the embedded font does not load".to_string());
    });
    result
}

/// The front of `result` as the bytes of a `.svg` or `.png` file (by the
/// extension of `path`); the caller writes them (the CLI's one output writer).
pub fn render(result: &SearchResult, path: &Path) -> Result<Vec<u8>, String> {
    let (x, y) = match result.objectives.as_slice() {
        [x, y, ..] => (*x, *y),
        _ => return Err("a plot needs two objectives (e.g. `--objective sample_macs,params`)".into()),
    };
    if result.front.is_empty() {
        return Err("the front is empty: no valid design to plot".into());
    }
    register_font()?;
    let size = (960, 640);
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("svg") => {
            let mut svg = String::new();
            draw(SVGBackend::with_string(&mut svg, size).into_drawing_area(), result, x, y)?;
            Ok(svg.into_bytes())
        }
        Some("png") => {
            let mut rgb = vec![0u8; (size.0 * size.1 * 3) as usize];
            draw(BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area(), result, x, y)?;
            let img = image::RgbImage::from_raw(size.0, size.1, rgb).ok_or("the plot's buffer has the wrong size")?;
            let mut out = std::io::Cursor::new(Vec::new());
            img.write_to(&mut out, image::ImageFormat::Png).map_err(|e| format!("cannot encode the plot: {e}"))?;
            Ok(out.into_inner())
        }
        _ => Err(format!("`{}`: plots are .svg or .png", path.display())),
    }
}

fn draw<DB: DrawingBackend>(
    area: DrawingArea<DB, Shift>,
    r: &SearchResult,
    x: Objective,
    y: Objective,
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| format!("cannot draw the plot: {e}");
    area.fill(&WHITE).map_err(err)?;
    let pts: Vec<(f64, f64)> = r
        .front
        .iter()
        .filter_map(|rec: &DesignRecord| Some((rec.value(x.metric)? as f64, rec.value(y.metric)? as f64)))
        .collect();
    let range = |v: &mut dyn Iterator<Item = f64>| {
        let (lo, hi) = v.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
        if lo == hi {
            (lo * 0.9 - 1.0, hi * 1.1 + 1.0)
        } else {
            let pad = (hi - lo) * 0.05;
            (lo - pad, hi + pad)
        }
    };
    let (x0, x1) = range(&mut pts.iter().map(|p| p.0));
    let (y0, y1) = range(&mut pts.iter().map(|p| p.1));
    let title = format!(
        "{}: {} designs on the front ({} valid of {})",
        r.model,
        r.front.len(),
        r.counts.valid,
        r.counts.designs
    );
    let mut chart = ChartBuilder::on(&area)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(96)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x.to_string())
        .y_desc(y.to_string())
        .x_label_formatter(&|v| human(*v))
        .y_label_formatter(&|v| human(*v))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    // The front as a staircase: sorted by x, each point's y holds until the next.
    let mut sorted = pts.clone();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let mut stairs = Vec::new();
    for (i, p) in sorted.iter().enumerate() {
        if i > 0 {
            stairs.push((p.0, sorted[i - 1].1));
        }
        stairs.push(*p);
    }
    chart.draw_series(LineSeries::new(stairs, BLUE.mix(0.5).stroke_width(2))).map_err(err)?;
    chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, BLUE.filled()))).map_err(err)?;
    area.present().map_err(err)?;
    Ok(())
}

/// 1.2G, 350M, 12.5K, 7.
fn human(v: f64) -> String {
    let a = v.abs();
    let (d, s) = if a >= 1e12 {
        (1e12, "T")
    } else if a >= 1e9 {
        (1e9, "G")
    } else if a >= 1e6 {
        (1e6, "M")
    } else if a >= 1e3 {
        (1e3, "K")
    } else {
        (1.0, "")
    };
    let x = v / d;
    if (x - x.round()).abs() < 1e-9 {
        format!("{}{s}", x.round())
    } else {
        format!("{x:.1}{s}")
    }
}
