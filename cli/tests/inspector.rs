//! `eventfold` on a store written by `bank-service`, while the service
//! holds it and after: every subcommand's table and JSON, the live tail,
//! actions through the service and refused without it, verify on damaged
//! stores.

mod common;

use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::Stdio;

fn path(dir: &tempfile::TempDir) -> &str {
    dir.path().to_str().unwrap_or_default()
}

#[test]
fn every_read_command_while_the_service_holds_the_store() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = path(&dir);
    let service = Service::start(dir.path())?;
    bank_day(&service)?;
    // The transfer's credit is written by the process manager.
    eventually(|| Ok(json_lines(&["read", store, "acc-bob"])?.len() == 2))?;

    let streams = json(&["streams", store])?;
    let names: Vec<_> = streams
        .as_array()
        .ok_or("not an array")?
        .iter()
        .map(|s| s["stream"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(names, ["acc-alice", "acc-bob"]);
    assert_eq!(streams[0]["version"], 3);
    assert_eq!(streams[0]["first_position"], 1);
    assert!(
        streams[0]["last_written"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    assert_eq!(
        json(&["streams", store, "--limit", "1"])?
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(
        json(&["streams", store, "--category", "other"])?,
        Value::Array(vec![])
    );
    let table = ok(&["streams", store])?;
    assert!(
        table.contains("last position") && table.contains("acc-alice"),
        "{table}"
    );

    let alice = json_lines(&["read", store, "acc-alice"])?;
    assert_eq!(alice.len(), 3);
    assert_eq!(alice[1]["event_type"], "Deposited");
    assert_eq!(
        alice[1]["payload"],
        serde_json::json!({"Deposited": {"amount": 100}})
    );
    assert_eq!(
        alice[1]["correlation_id"],
        "6f1c2b8e-1d2a-4c3b-9a7e-1234567890ab"
    );
    assert_eq!(alice[1]["schema_version"], 1);
    let backward = json_lines(&["read", store, "acc-alice", "--backward", "--count", "2"])?;
    let versions: Vec<_> = backward.iter().map(|e| e["version"].as_u64()).collect();
    assert_eq!(versions, [Some(3), Some(2)]);
    let from = json_lines(&["read", store, "acc-alice", "--from", "2", "--count", "1"])?;
    assert_eq!(from[0]["version"], 2);
    let table = ok(&["read", store, "acc-alice"])?;
    assert!(
        table.contains("{\"Opened\":{\"owner\":\"alice\"}}"),
        "{table}"
    );

    let tail = json_lines(&["tail", store, "--count", "10"])?;
    let positions: Vec<_> = tail.iter().map(|e| e["position"].as_u64()).collect();
    assert_eq!(positions, [Some(1), Some(2), Some(3), Some(4), Some(5)]);
    let deposits = json_lines(&["tail", store, "--from", "1", "--type", "Deposited"])?;
    assert_eq!(deposits.len(), 1);
    let credits = json_lines(&[
        "tail",
        store,
        "--count",
        "10",
        "--category",
        "acc",
        "--type",
        "TransferCredited",
    ])?;
    assert_eq!(credits.len(), 1);
    assert_eq!(credits[0]["stream"], "acc-bob");
    // The credit names the debit that caused it.
    assert!(credits[0]["causation_id"].is_string());

    eventually(|| Ok(json(&["projections", store])?[0]["lag"] == 0))?;
    let projections = json(&["projections", store])?;
    assert_eq!(projections[0]["name"], "balances");
    assert_eq!(projections[0]["state"], "active");
    assert_eq!(projections[0]["checkpoint"], 5);
    assert_eq!(projections[0]["parked"], 0);
    assert!(ok(&["projections", store])?.contains("balances@v1"));
    assert_eq!(json(&["parked", store, "balances"])?, Value::Array(vec![]));
    assert!(fails(&["parked", store, "nothing"])?.contains("nothing named nothing"));

    eventually(|| Ok(json(&["processes", store])?[0]["lag"] == 0))?;
    let processes = json(&["processes", store])?;
    assert_eq!(processes[0]["name"], "transfers");
    assert_eq!(processes[0]["instances"], 1);
    assert_eq!(processes[0]["stuck"], 0);
    assert_eq!(processes[0]["outbox"], 0);
    assert!(ok(&["processes", store])?.contains("timers due"));
    assert_eq!(json(&["stuck", store, "transfers"])?, Value::Array(vec![]));

    let stats = json(&["stats", store])?;
    assert_eq!(stats["head"], 5);
    assert_eq!(stats["streams"], 2);
    assert!(stats["directory_bytes"].as_u64().is_some_and(|b| b > 0));
    let keyspaces = stats["keyspaces"].as_array().ok_or("no keyspaces")?;
    assert!(
        keyspaces
            .iter()
            .any(|k| k["keyspace"] == "global" && k["estimated_keys"].as_u64() > Some(0))
    );
    assert!(ok(&["stats", store])?.contains("keys (estimated)"));

    let verify = json(&["verify", store])?;
    assert_eq!(verify["clean"], true);
    assert_eq!(verify["events"], 5);
    assert!(ok(&["verify", store])?.contains("faults"));

    // The service, inspected all along, still serves and shuts down cleanly.
    service.post("/accounts/alice/deposit", serde_json::json!({"amount": 1}))?;
    service.terminate()?;
    // Its store is whole.
    assert_eq!(json(&["verify", store])?["events"], 6);
    Ok(())
}

#[test]
fn tail_follow_sees_what_the_service_writes() -> TestResult {
    let dir = tempfile::tempdir()?;
    let service = Service::start(dir.path())?;
    service.post(
        "/accounts/carol/open",
        serde_json::json!({"owner": "carol"}),
    )?;
    let mut tail = eventfold()
        .args([
            "--json",
            "tail",
            path(&dir),
            "--from",
            "1",
            "--follow",
            "--count",
            "4",
        ])
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = tail.stdout.take().ok_or("no stdout")?;
    for amount in [5, 6, 7] {
        service.post(
            "/accounts/carol/deposit",
            serde_json::json!({"amount": amount}),
        )?;
    }
    let lines: Vec<Value> = BufReader::new(stdout)
        .lines()
        .map(|line| {
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(serde_json::from_str(&line?)?)
        })
        .collect::<Result<_, _>>()?;
    assert!(tail.wait()?.success());
    let positions: Vec<_> = lines.iter().map(|e| e["position"].as_u64()).collect();
    assert_eq!(positions, [Some(1), Some(2), Some(3), Some(4)]);
    assert_eq!(
        lines[3]["payload"],
        serde_json::json!({"Deposited": {"amount": 7}})
    );
    service.terminate()
}

#[test]
fn actions_go_through_the_service_and_are_refused_without_it() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = path(&dir);
    let service = Service::start(dir.path())?;
    bank_day(&service)?;
    let base = service.base.clone();

    // Held by the service: refused, saying how to proceed.
    let refused = fails(&["retry", "balances", "3", "--store", store])?;
    assert!(
        refused.contains("in use") && refused.contains("--service URL"),
        "{refused}"
    );
    let refused = fails(&["upgrade", store])?;
    assert!(
        refused.contains("in use") && refused.contains("stop the service"),
        "{refused}"
    );
    let refused = fails(&["backup", "/nonexistent/backup", "--store", store])?;
    assert!(refused.contains("in use"), "{refused}");
    assert!(
        fails(&["resume", "transfers", "t-1"])?.contains("needs --store PATH or --service URL")
    );

    // Through the service: its token is needed; its answers come back.
    let unauthorized = fails(&["retry", "balances", "3", "--service", &base])?;
    assert!(unauthorized.contains("401"), "{unauthorized}");
    let not_parked = fails(&[
        "retry",
        "balances",
        "3",
        "--service",
        &base,
        "--token",
        TOKEN,
    ])?;
    assert!(not_parked.contains("not_parked"), "{not_parked}");
    let output = eventfold()
        .args(["skip", "balances", "3", "--service", &base])
        .env("EVENTFOLD_ADMIN_TOKEN", TOKEN)
        .output()?;
    assert!(String::from_utf8(output.stderr)?.contains("not_parked"));
    for action in ["cancel", "resume"] {
        let no_instance = fails(&[
            action,
            "transfers",
            "t-none",
            "--service",
            &base,
            "--token",
            TOKEN,
        ])?;
        assert!(no_instance.contains("no_instance"), "{no_instance}");
    }

    let backups = tempfile::tempdir()?;
    let backup_dir = backups.path().join("b");
    let backup_path = backup_dir.to_str().unwrap_or_default();
    let backup = json(&["backup", backup_path, "--service", &base, "--token", TOKEN])?;
    assert_eq!(backup["backup_id"], 1);
    let restored = backups.path().join("restored");
    let restored_path = restored.to_str().unwrap_or_default();
    json(&["restore", backup_path, restored_path])?;
    assert_eq!(
        json(&["stats", restored_path])?["head"],
        json(&["stats", store])?["head"]
    );
    assert!(fails(&["restore", backup_path, restored_path])?.contains("not empty"));
    service.terminate()?;

    // No service: an action that runs handlers has nothing to run them.
    let refused = fails(&["retry", "balances", "3", "--store", store])?;
    assert!(
        refused.contains("only the service that embeds the runtime has"),
        "{refused}"
    );
    // A backup of a store nobody holds is taken directly.
    let direct = backups.path().join("direct");
    let backup = json(&[
        "backup",
        direct.to_str().unwrap_or_default(),
        "--store",
        store,
    ])?;
    assert_eq!(backup["backup_id"], 1);
    // The store is as it was: nothing the refusals did changed it.
    assert!(json(&["verify", store])?["clean"] == true);
    // With the store to themselves: upgrade (already current) and salvage
    // (nothing damaged) change nothing and say so.
    let upgrade = json(&["upgrade", store])?;
    assert_eq!(upgrade["from"], "eventfold-store-v2");
    assert_eq!(upgrade["events_indexed"], 0);
    let salvage = json(&["salvage", store])?;
    assert_eq!(salvage["damage"], Value::Null);
    assert_eq!(salvage["positions_lost"], 0);
    assert!(ok(&["salvage", store])?.contains("positions lost"));
    assert!(json(&["verify", store])?["clean"] == true);
    Ok(())
}

#[test]
fn usage_errors_and_missing_stores_are_told() -> TestResult {
    let dir = tempfile::tempdir()?;
    let missing = dir.path().join("none");
    let missing = missing.to_str().unwrap_or_default();
    assert!(fails(&["streams", missing])?.contains("no eventfold store"));
    assert!(fails(&["read", path(&dir), ""])?.contains("not a stream id"));
    let output = run(&["nonsense"])?;
    assert_eq!(output.status.code(), Some(2));
    let help = ok(&["--help"])?;
    for command in [
        "streams",
        "read",
        "tail",
        "projections",
        "parked",
        "retry",
        "skip",
        "processes",
        "stuck",
        "resume",
        "cancel",
        "backup",
        "restore",
        "verify",
        "upgrade",
        "salvage",
        "stats",
    ] {
        assert!(help.contains(command), "{command} missing from --help");
    }
    Ok(())
}
