//! The load generator runs every workload end to end (small sizes) and
//! writes the figures it promises: the JSON fields and the SVG plot.

use serde_json::Value;
use std::process::Command;

/// Runs `loadgen` with `args` and returns its JSON figures.
fn loadgen(workload: &str, args: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("figures.json");
    let plot = dir.path().join("plot.svg");
    let output = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--workload", workload, "--quiet", "--json"])
        .arg(&json)
        .arg("--plot")
        .arg(&plot)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "loadgen {workload} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("ratio to baseline"), "no table:\n{stdout}");
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("polyline"), "{svg}");
    serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap()
}

fn number(figures: &Value, field: &str) -> f64 {
    figures[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} is not a number in {figures}"))
}

/// The fields every run writes, with values that make sense.
fn check_common(figures: &Value, workload: &str, commands: u64) {
    assert_eq!(figures["workload"], workload);
    assert_eq!(figures["commands"].as_u64(), Some(commands), "{figures}");
    assert!(number(figures, "seconds") > 0.0);
    assert!(number(figures, "commands_per_s") > 0.0);
    assert!(number(figures, "rss_bytes_peak") > 0.0);
    for field in [
        "latency_us_p50",
        "latency_us_p99",
        "latency_us_p999",
        "latency_us_max",
        "events_per_fsync",
        "baseline_commands_per_s",
        "ratio_to_baseline",
    ] {
        assert!(figures.get(field).is_some(), "{field} missing in {figures}");
    }
    let timeline = figures["throughput_timeline"].as_array().unwrap();
    assert!(!timeline.is_empty());
}

fn check_latency(figures: &Value) {
    let p50 = number(figures, "latency_us_p50");
    let p99 = number(figures, "latency_us_p99");
    let max = number(figures, "latency_us_max");
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{figures}");
}

#[test]
fn w1_w2_w3_deposits_with_their_baselines() {
    for (workload, durability) in [("w1", "Sync"), ("w2", "Buffered"), ("w3", "Sync")] {
        let figures = loadgen(
            workload,
            &["--accounts", "100", "--commands", "2000", "--clients", "8"],
        );
        check_common(&figures, &workload.to_uppercase(), 2000);
        check_latency(&figures);
        assert_eq!(figures["durability"], durability);
        assert!(number(&figures, "baseline_commands_per_s") > 0.0);
        assert!(number(&figures, "ratio_to_baseline") > 0.0);
        assert_eq!(figures["clients_on"], "shards", "the default");
        if durability == "Sync" {
            assert!(number(&figures, "events_per_fsync") >= 1.0, "{figures}");
        } else {
            assert!(figures["events_per_fsync"].is_null(), "{figures}");
        }
    }
}

#[test]
fn clients_run_on_a_thread_of_their_own_when_asked() {
    let args = [
        "--accounts",
        "100",
        "--commands",
        "1000",
        "--clients",
        "8",
        "--clients-on",
        "thread",
        "--no-baseline",
    ];
    let figures = loadgen("w1", &args);
    check_common(&figures, "W1", 1000);
    check_latency(&figures);
    assert_eq!(figures["clients_on"], "thread");
    let figures = loadgen("w7", &args);
    assert_eq!(figures["clients_on"], "thread");
    assert_eq!(figures["money_conserved"], true);
}

#[test]
fn w4_passivates_under_its_resident_bound() {
    let figures = loadgen(
        "w4",
        &[
            "--accounts",
            "2000",
            "--commands",
            "2000",
            "--clients",
            "8",
            "--resident-max",
            "200",
        ],
    );
    check_common(&figures, "W4", 2000);
    check_latency(&figures);
    assert!(figures["resident_actors_at_end"].as_u64().unwrap() <= 200);
    // Most deposits find their account passivated: it is activated again.
    assert!(figures["activations"].as_u64().unwrap() > 1000, "{figures}");
    assert_eq!(figures["within_memory_limit"], true);
}

#[test]
fn w5_catches_up_and_compares_with_a_raw_iteration() {
    let figures = loadgen("w5", &["--commands", "5000", "--accounts", "50"]);
    check_common(&figures, "W5", 5000);
    assert!(figures["latency_us_p50"].is_null());
    assert!(number(&figures, "ratio_to_baseline") > 0.0);
}

#[test]
fn w6_activates_from_a_snapshot_and_without() {
    let figures = loadgen("w6", &["--history", "3000", "--commands", "40"]);
    check_common(&figures, "W6", 20);
    check_latency(&figures);
    assert!(figures["snapshot_at_version"].as_u64().unwrap() >= 1000);
    assert_eq!(figures["no_snapshot_activations"].as_u64(), Some(20));
}

#[test]
fn w7_transfers_conserve_money() {
    let figures = loadgen(
        "w7",
        &["--accounts", "200", "--commands", "500", "--clients", "16"],
    );
    check_common(&figures, "W7", 500);
    check_latency(&figures);
    assert_eq!(figures["money_conserved"], true);
    assert_eq!(
        figures["completed"].as_u64().unwrap() + figures["compensated"].as_u64().unwrap(),
        500
    );
}

#[test]
fn w8_measures_memory_per_resident_aggregate() {
    let figures = loadgen(
        "w8",
        &["--accounts", "3000", "--clients", "8", "--runs", "3"],
    );
    check_common(&figures, "W8", 3000);
    assert_eq!(figures["resident_actors"].as_u64(), Some(3000));
    assert!(number(&figures, "rss_bytes_per_resident_aggregate") > 0.0);
    // The binaries allocate with mimalloc (the default build), and W8 also
    // reports the memory it has committed per actor: a number, whatever
    // it reused from the phases before.
    assert_eq!(figures["allocator"], "mimalloc");
    assert!(figures["allocator_committed_bytes_per_resident_aggregate"].is_number());
    // W8's runs are judged by memory, not throughput: the figures are
    // those of the run with the median bytes per aggregate.
    let bytes = sorted_runs(&figures, "rss_bytes_per_resident_aggregate");
    assert_eq!(bytes.len(), 3);
    assert_eq!(
        number(&figures, "rss_bytes_per_resident_aggregate"),
        bytes[1]
    );
}

/// `field` of every run `--runs` listed, in ascending order.
fn sorted_runs(figures: &Value, field: &str) -> Vec<f64> {
    let mut values: Vec<f64> = figures["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|run| number(run, field))
        .collect();
    values.sort_by(f64::total_cmp);
    values
}

#[test]
fn bad_arguments_are_refused_with_a_message() {
    let output = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--workload", "w9"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("w9"));
}

#[test]
fn runs_report_the_median_run_and_list_every_run() {
    let figures = loadgen(
        "w3",
        &[
            "--accounts",
            "10",
            "--commands",
            "500",
            "--clients",
            "4",
            "--runs",
            "3",
        ],
    );
    let rates = sorted_runs(&figures, "commands_per_s");
    assert_eq!(rates.len(), 3);
    assert_eq!(number(&figures, "commands_per_s"), rates[1]);
}
