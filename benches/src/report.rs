//! A run's figures as a table, as JSON and as an SVG plot.

use crate::workloads::Report;
use plotters::prelude::*;
use serde_json::{Map, Value, json};
use std::path::Path;

/// Quantiles drawn in the latency distribution, from the median to 99.999%.
const PLOT_QUANTILES: usize = 200;

/// The machine a run ran on: cores and CPU model (Linux).
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cores} cores, {model}")
}

/// The figures as JSON: the fields every workload has, then its own.
pub fn to_json(report: &Report) -> Value {
    let quantile = |q: f64| report.latency.as_ref().map(|h| h.value_at_quantile(q));
    let mut map = Map::new();
    let common = json!({
        "workload": report.workload.name(),
        "unit": report.workload.unit(),
        "durability": format!("{:?}", report.durability),
        "accounts": report.accounts,
        "clients": report.clients.count,
        "clients_on": report.clients.on.name(),
        "commands": report.commands,
        "seconds": report.seconds,
        "commands_per_s": report.per_second(),
        "latency_us_p50": quantile(0.5),
        "latency_us_p99": quantile(0.99),
        "latency_us_p999": quantile(0.999),
        "latency_us_max": report.latency.as_ref().map(|h| h.max()),
        "rss_bytes_peak": report.rss_bytes_peak,
        "events_per_fsync": report.events_per_fsync,
        "baseline_commands_per_s": report.baseline_per_s,
        "ratio_to_baseline": report.ratio_to_baseline(),
        "baseline": report.baseline,
        "machine": machine(),
        "allocator": crate::allocator::NAME,
    });
    if let Value::Object(common) = common {
        map.extend(common);
    }
    for (name, value) in &report.extra {
        map.insert((*name).to_owned(), value.clone());
    }
    map.insert(
        "throughput_timeline".into(),
        json!(
            report
                .timeline
                .iter()
                .map(|(t, n)| json!([t, n]))
                .collect::<Vec<_>>()
        ),
    );
    Value::Object(map)
}

fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.abs() >= 100.0 => format!("{f:.0}"),
            Some(f) if n.is_f64() => format!("{f:.2}"),
            _ => n.to_string(),
        },
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The figures as a two-column table.
pub fn table(report: &Report) -> String {
    let json = to_json(report);
    let unit = report.workload.unit();
    let mut rows = vec![
        ("workload", json["workload"].clone()),
        ("durability", json["durability"].clone()),
        ("accounts", json["accounts"].clone()),
        ("clients", json["clients"].clone()),
        ("clients on", json["clients_on"].clone()),
        (unit, json["commands"].clone()),
        ("seconds", json["seconds"].clone()),
    ];
    let per_s = format!("{unit}/s");
    rows.push((per_s.as_str(), json["commands_per_s"].clone()));
    for (name, key) in [
        ("latency p50 (us)", "latency_us_p50"),
        ("latency p99 (us)", "latency_us_p99"),
        ("latency p99.9 (us)", "latency_us_p999"),
        ("latency max (us)", "latency_us_max"),
        ("peak RSS (bytes)", "rss_bytes_peak"),
        ("events/fsync", "events_per_fsync"),
        ("baseline/s", "baseline_commands_per_s"),
        ("ratio to baseline", "ratio_to_baseline"),
    ] {
        rows.push((name, json[key].clone()));
    }
    for (name, value) in &report.extra {
        rows.push((name, value.clone()));
    }
    let mut out = String::new();
    for (name, value) in rows {
        out.push_str(&format!("{name:<36} {:>16}\n", cell(&value)));
    }
    out.push_str(&format!("{:<36} {}\n", "baseline", report.baseline));
    out.push_str(&format!("{:<36} {}\n", "machine", machine()));
    out
}

/// Draws the latency distribution (latency by percentile, log scales) and
/// the throughput over time (per [`crate::measure::SAMPLE_EVERY`] interval)
/// side by side as an SVG image.
pub fn plot(report: &Report, path: &Path) -> Result<(), String> {
    let root = SVGBackend::new(path, (1200, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (left, right) = root.split_horizontally(600);
    let title = format!(
        "{} ({:?}): {:.0} {}/s",
        report.workload.name(),
        report.durability,
        report.per_second(),
        report.workload.unit()
    );
    match &report.latency {
        Some(h) if !h.is_empty() => {
            // x: -log10(1 - q), so 90% → 1, 99% → 2, 99.9% → 3 …
            let points: Vec<(f64, f64)> = (0..=PLOT_QUANTILES)
                .map(|i| {
                    let nines = 5.0 * i as f64 / PLOT_QUANTILES as f64;
                    let q = 1.0 - 10f64.powf(-nines);
                    (nines, h.value_at_quantile(q).max(1) as f64)
                })
                .collect();
            let top = (h.max().max(1) as f64) * 1.5;
            let mut chart = ChartBuilder::on(&left)
                .caption("latency by percentile", ("sans-serif", 18))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(70)
                .build_cartesian_2d(0f64..5f64, (1f64..top).log_scale())
                .map_err(|e| e.to_string())?;
            chart
                .configure_mesh()
                .x_desc("percentile")
                .y_desc("latency (us)")
                // One label per nine: 0%, 90%, 99%, 99.9% …
                .x_labels(6)
                .x_label_formatter(&|x| {
                    let nines = x.round() as usize;
                    match nines {
                        0 => "0%".to_owned(),
                        1 => "90%".to_owned(),
                        n => format!("{:.*}%", n - 2, 100.0 * (1.0 - 10f64.powf(-x.round()))),
                    }
                })
                .y_label_formatter(&|y| format!("{y:.0}"))
                .draw()
                .map_err(|e| e.to_string())?;
            chart
                .draw_series(LineSeries::new(points, &BLUE))
                .map_err(|e| e.to_string())?;
        }
        _ => {
            left.draw(&Text::new(
                "no per-operation latency in this workload",
                (40, 200),
                ("sans-serif", 16),
            ))
            .map_err(|e| e.to_string())?;
        }
    }
    let rates: Vec<(f64, f64)> = report
        .timeline
        .windows(2)
        .map(|w| {
            let (t0, n0) = w[0];
            let (t1, n1) = w[1];
            (t1, n1.saturating_sub(n0) as f64 / (t1 - t0).max(1e-6))
        })
        .collect();
    let end = rates.last().map_or(1.0, |r| r.0).max(0.1);
    let peak = rates.iter().map(|r| r.1).fold(1.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&right)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..end, 0f64..peak)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc(format!("{}/s", report.workload.unit()))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(LineSeries::new(rates, &RED))
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}
