//! `http-load` drives `bank-service` over HTTP beside the in-process W1 and
//! writes its figures. (It starts the service from the same target
//! directory: `cargo test --workspace` builds it with the examples' tests.)

use serde_json::Value;
use std::process::Command;

#[test]
fn http_load_runs_rounds_beside_the_in_process_w1() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("figures.json");
    let output = Command::new(env!("CARGO_BIN_EXE_http-load"))
        .args(["--accounts", "50", "--clients", "8", "--commands", "800"])
        .args(["--rounds", "2", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "http-load failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let figures: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rounds = figures["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 2);
    for round in rounds {
        for field in [
            "http_deposits_per_s",
            "in_process_deposits_per_s",
            "http_over_in_process",
            "service_cpu_us_per_command",
        ] {
            let value = round[field].as_f64().unwrap_or(0.0);
            assert!(value > 0.0, "{field} in {round}");
        }
        assert!(
            round["http_latency_p99_us"].as_u64().unwrap()
                >= round["http_latency_p50_us"].as_u64().unwrap()
        );
    }
}

#[test]
fn http_load_refuses_a_service_that_is_not_on_loopback() {
    let output = Command::new(env!("CARGO_BIN_EXE_http-load"))
        .args(["--service", "http://192.0.2.1:8080", "--http-only"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not loopback"), "{stderr}");
}
