//! SVG charts beside summary.md, drawn with plotters' SVG backend (text stays SVG `<text>`, so
//! no font files are read): requests/s per configuration with the min–max range over the
//! rounds, the ServiceEntry sweep E against I, the connect→deny latency distribution, and DNS
//! query latency. A chart without data is not drawn; one that fails to draw is reported and
//! skipped, never failing the run.
use std::{error::Error, path::Path};

use plotters::prelude::*;

use super::{
    http::{Config, metric},
    report::{Report, Stat},
};

type DrawResult = Result<(), Box<dyn Error>>;
/// Draws one chart into a file with a title; `None` when the report has no data for it.
type Draw = fn(&Report, &Path, &str) -> Option<DrawResult>;

/// Colours of the series, in order.
const COLOURS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];
const SIZE: (u32, u32) = (960, 540);
const FONT: &str = "sans-serif";

/// Draws every chart the report has data for into `dir`; returns (file name, title) of those
/// written.
pub fn write(report: &Report, dir: &Path) -> Vec<(String, String)> {
    let charts: [(&str, &str, Draw); 4] = [
        (
            "requests.svg",
            "Requests/s per configuration (median, min–max over the rounds)",
            requests,
        ),
        (
            "sweep.svg",
            "ServiceEntry sweep: connection-per-request req/s to the last of N addresses",
            sweep,
        ),
        (
            "deny.svg",
            "connect→deny latency distribution (µs, log scale)",
            deny,
        ),
        (
            "dns.svg",
            "DNS query latency: direct against through egress (µs)",
            dns,
        ),
    ];
    let mut written = Vec::new();
    for (file, title, draw) in charts {
        let path = dir.join(file);
        match draw(report, &path, title) {
            None => {}
            Some(Ok(())) => written.push((file.to_owned(), title.to_owned())),
            Some(Err(e)) => eprintln!("    chart {} not drawn: {e}", path.display()),
        }
    }
    written
}

/// Bars per configuration: keep-alive 16 and 64 connections, connection per request, each
/// with a whisker from the lowest to the highest round.
fn requests(report: &Report, path: &Path, title: &str) -> Option<DrawResult> {
    let figures = [
        (metric::KA16, "keep-alive, 16 connections"),
        (metric::KA64, "keep-alive, 64 connections"),
        (metric::CPR, "connection per request, 16 connections"),
    ];
    let configs: Vec<(&str, Vec<Option<Stat>>)> = Config::ALL
        .iter()
        .map(|c| {
            let stats = figures
                .iter()
                .map(|(m, _)| report.stat(c.key(), m))
                .collect();
            (c.key(), stats)
        })
        .filter(|(_, stats): &(&str, Vec<Option<Stat>>)| stats.iter().any(Option::is_some))
        .collect();
    if configs.is_empty() {
        return None;
    }
    let top = configs
        .iter()
        .flat_map(|(_, stats)| stats.iter().flatten().map(|s| s.max))
        .fold(0.0, f64::max);
    Some((|| -> DrawResult {
        let root = SVGBackend::new(path, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let n = configs.len();
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..(top * 1.15).max(1.0))?;
        let names: Vec<String> = configs.iter().map(|(k, _)| (*k).to_owned()).collect();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n)
            .x_label_formatter(&|x| label_at(&names, *x))
            .y_desc("requests/s")
            .y_label_formatter(&|y| format!("{y:.0}"))
            .label_style((FONT, 14))
            .draw()?;
        let width = 0.8 / figures.len() as f64;
        for (j, (_, label)) in figures.iter().enumerate() {
            let colour = COLOURS[j];
            let bars: Vec<(f64, Stat)> = configs
                .iter()
                .enumerate()
                .filter_map(|(i, (_, stats))| Some((i as f64 - 0.4 + width * j as f64, stats[j]?)))
                .collect();
            chart
                .draw_series(bars.iter().map(|(x0, s)| {
                    Rectangle::new([(*x0, 0.0), (x0 + width * 0.9, s.median)], colour.filled())
                }))?
                .label(*label)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled())
                });
            chart.draw_series(bars.iter().flat_map(|(x0, s)| {
                let x = x0 + width * 0.45;
                let cap = width * 0.2;
                [
                    PathElement::new(vec![(x, s.min), (x, s.max)], BLACK),
                    PathElement::new(vec![(x - cap, s.min), (x + cap, s.min)], BLACK),
                    PathElement::new(vec![(x - cap, s.max), (x + cap, s.max)], BLACK),
                ]
            }))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    })())
}

/// The configuration name under integer positions of the x axis, nothing elsewhere.
fn label_at(names: &[String], x: f64) -> String {
    let i = x.round();
    if (x - i).abs() > 0.01 || i < 0.0 {
        return String::new();
    }
    names.get(i as usize).cloned().unwrap_or_default()
}

/// E and I over the number of addresses (log scale), median with the min–max range.
fn sweep(report: &Report, path: &Path, title: &str) -> Option<DrawResult> {
    let sizes = &report.sweep_sizes;
    let series: Vec<(&str, Vec<(f64, Stat)>)> =
        [("E (eBPF LPM trie)", "E"), ("I (iptables REDIRECT)", "I")]
            .into_iter()
            .map(|(label, key)| {
                let points = sizes
                    .iter()
                    .filter_map(|n| {
                        Some((
                            *n as f64,
                            report.stat(&format!("sweep-{key}-{n}"), metric::CPR)?,
                        ))
                    })
                    .collect();
                (label, points)
            })
            .collect();
    if series.iter().all(|(_, p)| p.is_empty()) {
        return None;
    }
    let top = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, s)| s.max))
        .fold(0.0, f64::max);
    let largest = sizes.iter().copied().max().unwrap_or(1).max(10) as f64;
    Some((|| -> DrawResult {
        let root = SVGBackend::new(path, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(
                (0.7f64..largest * 1.5).log_scale(),
                0f64..(top * 1.15).max(1.0),
            )?;
        chart
            .configure_mesh()
            .x_desc("ServiceEntry addresses")
            .y_desc("requests/s")
            .y_label_formatter(&|y| format!("{y:.0}"))
            .x_label_formatter(&|x| format!("{x:.0}"))
            .label_style((FONT, 14))
            .draw()?;
        for (j, (label, points)) in series.iter().enumerate() {
            let colour = COLOURS[j];
            chart
                .draw_series(LineSeries::new(
                    points.iter().map(|(n, s)| (*n, s.median)),
                    colour.stroke_width(2),
                ))?
                .label(*label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2))
                });
            chart.draw_series(
                points
                    .iter()
                    .map(|(n, s)| Circle::new((*n, s.median), 4, colour.filled())),
            )?;
            chart.draw_series(points.iter().map(|(n, s)| {
                PathElement::new(vec![(*n, s.min), (*n, s.max)], colour.stroke_width(1))
            }))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerLeft)
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    })())
}

/// The percentile marks the latency charts draw, in order.
const MARKS: [&str; 5] = ["min", "p50", "p90", "p99", "max"];

/// Latency at min, p50, p90, p99 and max of each connect→deny scenario (medians over the
/// rounds), log scale: the shape of each distribution and the gap between them.
fn deny(report: &Report, path: &Path, title: &str) -> Option<DrawResult> {
    let series = percentile_series(
        report,
        &[
            ("K: kernel verdict cache (EPERM)", "deny-K"),
            ("W: egress waypoint (accept + close)", "deny-W"),
            ("Envoy: iptables REDIRECT, RBAC network filter", "deny-V"),
        ],
        "deny_",
    );
    percentile_chart(path, title, &MARKS, series, "µs (log scale)")
}

/// DNS: latency at min, p50, p90, p99 and max of the four paths.
fn dns(report: &Report, path: &Path, title: &str) -> Option<DrawResult> {
    let series = percentile_series(
        report,
        &[
            ("forwarded name, direct", "dns-direct-fwd"),
            ("forwarded name, through egress", "dns-proxy-fwd"),
            ("ServiceEntry host, direct", "dns-direct-se"),
            ("ServiceEntry host, answered by egress", "dns-proxy-se"),
        ],
        "",
    );
    percentile_chart(path, title, &MARKS, series, "µs (log scale)")
}

/// Each `(label, configuration)`'s median `{prefix}{mark}_us` at every mark that was measured
/// (and is positive, for the log scale); configurations with none are left out.
fn percentile_series<'a>(
    report: &Report,
    configurations: &[(&'a str, &str)],
    prefix: &str,
) -> Vec<(&'a str, Vec<(f64, f64)>)> {
    configurations
        .iter()
        .map(|&(label, key)| {
            let points = MARKS
                .iter()
                .enumerate()
                .filter_map(|(i, m)| {
                    let v = report.stat(key, &format!("{prefix}{m}_us"))?.median;
                    (v > 0.0).then_some((i as f64, v))
                })
                .collect();
            (label, points)
        })
        .filter(|(_, points): &(&str, Vec<(f64, f64)>)| !points.is_empty())
        .collect()
}

/// Lines over the percentile marks, log-scale y.
fn percentile_chart(
    path: &Path,
    title: &str,
    marks: &[&str],
    series: Vec<(&str, Vec<(f64, f64)>)>,
    y_desc: &str,
) -> Option<DrawResult> {
    if series.is_empty() {
        return None;
    }
    let values = series.iter().flat_map(|(_, p)| p.iter().map(|(_, v)| *v));
    let (low, high) = values.fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let names: Vec<String> = marks.iter().map(|m| (*m).to_owned()).collect();
    Some((|| -> DrawResult {
        let root = SVGBackend::new(path, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d(
                -0.2f64..(marks.len() as f64 - 0.8),
                (low * 0.7..high * 1.5).log_scale(),
            )?;
        chart
            .configure_mesh()
            .x_labels(marks.len())
            .x_label_formatter(&|x| label_at(&names, *x))
            .y_desc(y_desc)
            .y_label_formatter(&|y| format!("{y}"))
            .label_style((FONT, 14))
            .draw()?;
        for (j, (label, points)) in series.iter().enumerate() {
            let colour = COLOURS[j % COLOURS.len()];
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    colour.stroke_width(2),
                ))?
                .label(*label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2))
                });
            chart.draw_series(points.iter().map(|p| Circle::new(*p, 4, colour.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    })())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_svg_with_text_and_only_where_there_is_data() {
        let dir = std::env::temp_dir().join(format!("xtask-charts-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let mut report = crate::bench::report::tests::empty();
        for (round, (d, e)) in [(38_000.0, 11_000.0), (36_000.0, 12_000.0)]
            .iter()
            .enumerate()
        {
            report.sample("D", metric::KA16, round, *d);
            report.sample("E", metric::KA16, round, *e);
            report.sample("E", metric::CPR, round, e / 2.0);
        }
        report.sweep_sizes = vec![1, 100];
        for (n, e, i) in [(1, 5700.0, 4800.0), (100, 5600.0, 5000.0)] {
            report.sample(&format!("sweep-E-{n}"), metric::CPR, 0, e);
            report.sample(&format!("sweep-I-{n}"), metric::CPR, 0, i);
        }
        for (m, k, w) in [
            ("min", 1.2, 80.0),
            ("p50", 1.7, 112.0),
            ("p90", 2.0, 150.0),
            ("p99", 2.8, 249.0),
            ("max", 30.0, 900.0),
        ] {
            report.sample("deny-K", &format!("deny_{m}_us"), 0, k);
            report.sample("deny-W", &format!("deny_{m}_us"), 0, w);
        }
        let written = write(&report, &dir);
        let files: Vec<&str> = written.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            files,
            ["requests.svg", "sweep.svg", "deny.svg"],
            "no DNS data, no dns.svg"
        );
        let svg = std::fs::read_to_string(dir.join("requests.svg")).expect("requests.svg");
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(
            svg.contains("<text") && svg.contains("\nE\n</text>") && svg.contains("\nD\n</text>"),
            "{svg}"
        );
        assert!(svg.contains("requests/s"), "{svg}");
        assert!(svg.contains("<rect"), "bars: {svg}");
        let svg = std::fs::read_to_string(dir.join("deny.svg")).expect("deny.svg");
        assert!(svg.contains("W: egress waypoint"), "{svg}");
        assert!(!dir.join("dns.svg").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn labels_only_at_whole_positions() {
        let names = vec!["D".to_owned(), "E".to_owned()];
        assert_eq!(label_at(&names, 1.0), "E");
        assert_eq!(label_at(&names, 0.5), "");
        assert_eq!(label_at(&names, -1.0), "");
        assert_eq!(label_at(&names, 2.0), "");
    }
}
