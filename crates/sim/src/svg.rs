//! Line charts as SVG text: a few series over a shared x axis, with axes and a legend, so a
//! report opens as a picture in any browser.

use std::fmt::Write as _;

/// One line of a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// (x, y) points in x order.
    pub points: Vec<(f64, f64)>,
}

const COLOURS: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];

/// A chart of `series` titled `title`, with axis labels.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[&Series]) -> String {
    let (w, h, left, right, top, bottom) = (800.0, 420.0, 70.0, 20.0, 40.0, 50.0);
    let all = || series.iter().flat_map(|s| s.points.iter());
    let x_max = all().map(|p| p.0).fold(0.0_f64, f64::max).max(1e-9);
    let y_max = all().map(|p| p.1).fold(0.0_f64, f64::max).max(1e-9) * 1.05;
    let x = |v: f64| left + (w - left - right) * v / x_max;
    let y = |v: f64| h - bottom - (h - top - bottom) * v / y_max;
    let mut svg = String::new();
    let _ = write!(svg, r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#);
    let _ = write!(svg, r#"<rect width="{w}" height="{h}" fill="white"/><text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#, w / 2.0, escape(title));
    let _ = write!(svg, r#"<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="black"/>"#, h - bottom, w - right, h - bottom, h - bottom);
    for i in 0..=4 {
        let (xv, yv) = (x_max * f64::from(i) / 4.0, y_max * f64::from(i) / 4.0);
        let _ = write!(svg, r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#, x(xv), h - bottom + 16.0, tick(xv));
        let _ = write!(svg, r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#, left - 6.0, y(yv) + 4.0, tick(yv));
    }
    let _ = write!(svg, r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#, (left + w - right) / 2.0, h - 10.0, escape(x_label));
    let _ = write!(svg, r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{}</text>"#, h / 2.0, h / 2.0, escape(y_label));
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let points: Vec<String> = s.points.iter().map(|(a, b)| format!("{:.1},{:.1}", x(*a), y(*b))).collect();
        let _ = write!(svg, r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#, points.join(" "));
        let ly = top + 14.0 * i as f64;
        let _ = write!(svg, r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{colour}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#, w - 200.0, w - 180.0, w - 175.0, ly + 4.0, escape(&s.name));
    }
    svg.push_str("</svg>\n");
    svg
}

fn tick(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_is_one_svg_document_with_every_series() {
        let a = Series { name: "ours".into(), points: vec![(0.0, 0.0), (1.0, 5.0)] };
        let b = Series { name: "base <line>".into(), points: vec![(0.0, 1.0), (2.0, 3.0)] };
        let svg = line_chart("t", "hours", "nodes", &[&a, &b]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("base &lt;line&gt;"));
    }
}
