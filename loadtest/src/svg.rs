//! Charts as inline SVG for the HTML report: line charts (linear or log axes) and a histogram,
//! with axes, ticks and a legend. No scripts, no external resources: the markup draws itself.

use std::fmt::Write;

/// Drawing area inside the chart's view box.
const W: f64 = 760.0;
const H: f64 = 280.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 46.0;

/// One line of a chart.
pub struct Series<'a> {
    pub name: &'a str,
    /// A CSS colour; each series of a report has its own (the render test looks for them).
    pub color: &'a str,
    pub points: Vec<(f64, f64)>,
}

/// An axis: its label, whether it is logarithmic, and how a tick value is written.
pub struct Axis<'a> {
    pub label: &'a str,
    pub log: bool,
    pub fmt: fn(f64) -> String,
}

/// Escapes text for HTML and SVG.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A value range and its mapping to pixels.
struct Scale {
    lo: f64,
    hi: f64,
    log: bool,
    px0: f64,
    px1: f64,
}

impl Scale {
    fn new(values: impl Iterator<Item = f64>, log: bool, px: (f64, f64)) -> Self {
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for v in values.filter(|v| v.is_finite() && (!log || *v > 0.0)) {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        if !lo.is_finite() {
            (lo, hi) = if log { (1.0, 10.0) } else { (0.0, 1.0) };
        }
        if log {
            lo = 10f64.powf(lo.log10().floor());
            hi = 10f64.powf(hi.log10().ceil()).max(lo * 10.0);
        } else {
            lo = lo.min(0.0);
            hi = if hi <= lo { lo + 1.0 } else { nice_ceil(hi) };
        }
        Self {
            lo,
            hi,
            log,
            px0: px.0,
            px1: px.1,
        }
    }

    fn map(&self, v: f64) -> f64 {
        let f = if self.log {
            (v.max(self.lo).log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        };
        self.px0 + f.clamp(0.0, 1.0) * (self.px1 - self.px0)
    }

    fn ticks(&self) -> Vec<f64> {
        if self.log {
            let (a, b) = (
                self.lo.log10().round() as i32,
                self.hi.log10().round() as i32,
            );
            return (a..=b).map(|e| 10f64.powi(e)).collect();
        }
        let step = nice_step((self.hi - self.lo) / 5.0);
        let mut v = (self.lo / step).ceil() * step;
        let mut out = Vec::new();
        while v <= self.hi + step * 1e-9 && out.len() < 20 {
            out.push(v);
            v += step;
        }
        out
    }
}

/// 1, 2 or 5 times a power of ten, at least `x`.
fn nice_step(x: f64) -> f64 {
    if x <= 0.0 || !x.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(x.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|s| *s >= x)
        .unwrap_or(10.0 * p)
}

fn nice_ceil(x: f64) -> f64 {
    let step = nice_step(x / 5.0);
    (x / step).ceil() * step
}

fn open(out: &mut String, title: &str, id: &str) {
    let _ = write!(
        out,
        r##"<svg class="chart" id="{id}" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{t}" xmlns="http://www.w3.org/2000/svg"><title>{t}</title><rect x="0" y="0" width="{W}" height="{H}" fill="#ffffff"/><text x="{LEFT}" y="20" font-size="14" font-weight="bold" fill="#222">{t}</text>"##,
        t = esc(title)
    );
}

fn axes(out: &mut String, x: (&Scale, &Axis), y: (&Scale, &Axis)) {
    let (x0, x1, y0, y1) = (LEFT, W - RIGHT, H - BOTTOM, TOP);
    for t in y.0.ticks() {
        let py = y.0.map(t);
        let _ = write!(
            out,
            r##"<line x1="{x0}" y1="{py:.1}" x2="{x1}" y2="{py:.1}" stroke="#e4e4e4"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end" fill="#444">{}</text>"##,
            x0 - 6.0,
            py + 4.0,
            esc(&(y.1.fmt)(t))
        );
    }
    for t in x.0.ticks() {
        let px = x.0.map(t);
        let _ = write!(
            out,
            r##"<line x1="{px:.1}" y1="{y0}" x2="{px:.1}" y2="{:.1}" stroke="#888"/><text x="{px:.1}" y="{:.1}" font-size="11" text-anchor="middle" fill="#444">{}</text>"##,
            y0 + 5.0,
            y0 + 18.0,
            esc(&(x.1.fmt)(t))
        );
    }
    let _ = write!(
        out,
        r##"<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#444"/><line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="#444"/><text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle" fill="#222">{}</text><text x="14" y="{:.1}" font-size="12" text-anchor="middle" fill="#222" transform="rotate(-90 14 {:.1})">{}</text>"##,
        (x0 + x1) / 2.0,
        H - 8.0,
        esc(x.1.label),
        (y0 + y1) / 2.0,
        (y0 + y1) / 2.0,
        esc(y.1.label)
    );
}

fn legend<'a>(out: &mut String, items: impl Iterator<Item = (&'a str, &'a str)>) {
    let mut x = W - RIGHT;
    let items: Vec<_> = items.collect();
    for (name, color) in items.iter().rev() {
        x -= 14.0 + 7.0 * name.chars().count() as f64;
        let _ = write!(
            out,
            r##"<rect x="{x:.1}" y="10" width="10" height="10" fill="{color}"/><text x="{:.1}" y="19" font-size="11" fill="#222">{}</text>"##,
            x + 13.0,
            esc(name)
        );
        x -= 10.0;
    }
}

/// A message in place of a chart without data.
fn empty(out: &mut String, why: &str) {
    let _ = write!(
        out,
        r##"<text x="{:.1}" y="{:.1}" font-size="13" text-anchor="middle" fill="#777">{}</text>"##,
        W / 2.0,
        H / 2.0,
        esc(why)
    );
}

/// A line chart; `none` is shown when no series has a point.
pub fn lines(id: &str, title: &str, x: &Axis, y: &Axis, series: &[Series], none: &str) -> String {
    let mut out = String::new();
    open(&mut out, title, id);
    let pts = || series.iter().flat_map(|s| s.points.iter());
    if pts().next().is_none() {
        empty(&mut out, none);
        out.push_str("</svg>");
        return out;
    }
    let xs = Scale::new(pts().map(|p| p.0), x.log, (LEFT, W - RIGHT));
    let ys = Scale::new(pts().map(|p| p.1), y.log, (H - BOTTOM, TOP));
    axes(&mut out, (&xs, x), (&ys, y));
    for s in series.iter().filter(|s| !s.points.is_empty()) {
        let mut d = String::new();
        for (i, (px, py)) in s.points.iter().enumerate() {
            let cmd = if i == 0 { 'M' } else { 'L' };
            let _ = write!(d, "{cmd}{:.1} {:.1} ", xs.map(*px), ys.map(*py));
        }
        let _ = write!(
            out,
            r#"<path class="series" d="{}" fill="none" stroke="{}" stroke-width="2.5" stroke-linejoin="round"/>"#,
            d.trim_end(),
            s.color
        );
    }
    legend(&mut out, series.iter().map(|s| (s.name, s.color)));
    out.push_str("</svg>");
    out
}

/// A histogram: bars `(from, to, count)` on a logarithmic x axis.
pub fn histogram(id: &str, title: &str, x: &Axis, bars: &[(f64, f64, f64)], color: &str) -> String {
    let mut out = String::new();
    open(&mut out, title, id);
    if bars.iter().all(|b| b.2 <= 0.0) {
        empty(&mut out, "no latencies recorded");
        out.push_str("</svg>");
        return out;
    }
    let xs = Scale::new(
        bars.iter().flat_map(|b| [b.0, b.1]),
        x.log,
        (LEFT, W - RIGHT),
    );
    let ys = Scale::new(bars.iter().map(|b| b.2), false, (H - BOTTOM, TOP));
    let y_axis = Axis {
        label: "count",
        log: false,
        fmt: count,
    };
    axes(&mut out, (&xs, x), (&ys, &y_axis));
    let base = ys.map(0.0);
    for &(from, to, n) in bars.iter().filter(|b| b.2 > 0.0) {
        let (x0, x1) = (xs.map(from), xs.map(to));
        let top = ys.map(n);
        let _ = write!(
            out,
            r#"<rect class="bar" x="{x0:.1}" y="{top:.1}" width="{:.1}" height="{:.1}" fill="{color}"/>"#,
            (x1 - x0 - 1.0).max(1.0),
            (base - top).max(1.0)
        );
    }
    out.push_str("</svg>");
    out
}

/// A count as a tick label (1.5k, 2M).
pub fn count(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if a >= 1e3 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

/// A number with at most two decimals and no trailing zeros.
pub fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_and_ticks() {
        let s = Scale::new([3.0, 87.0].into_iter(), false, (0.0, 100.0));
        assert_eq!((s.lo, s.hi), (0.0, 100.0));
        assert_eq!(s.ticks(), [0.0, 20.0, 40.0, 60.0, 80.0, 100.0]);
        assert_eq!(s.map(50.0), 50.0);
        let l = Scale::new([120.0, 45_000.0].into_iter(), true, (0.0, 300.0));
        assert_eq!((l.lo, l.hi), (100.0, 100_000.0));
        assert_eq!(l.ticks().len(), 4);
        assert_eq!(l.map(1000.0), 100.0);
        assert_eq!(
            (count(1500.0), count(2e6), trim(0.5)),
            ("1.5k".into(), "2M".into(), "0.5".into())
        );
    }

    #[test]
    fn charts_draw_their_data_or_say_why_not() {
        let ax = Axis {
            label: "s",
            log: false,
            fmt: trim,
        };
        let s = [Series {
            name: "open <all>",
            color: "#2ca02c",
            points: vec![(0.0, 0.0), (1.0, 5.0), (2.0, 9.0)],
        }];
        let svg = lines("c", "Connections", &ax, &ax, &s, "none");
        assert!(
            svg.contains("<path class=\"series\" d=\"M70.0 234.0 L"),
            "{svg}"
        );
        assert!(svg.contains("open &lt;all&gt;") && svg.ends_with("</svg>"));
        let none = lines("c", "x", &ax, &ax, &[], "no server samples");
        assert!(none.contains("no server samples") && !none.contains("<path"));
        let h = histogram(
            "h",
            "Latency",
            &ax,
            &[(1.0, 2.0, 3.0), (2.0, 4.0, 0.0)],
            "#1f77b4",
        );
        assert_eq!(h.matches("class=\"bar\"").count(), 1);
    }
}
