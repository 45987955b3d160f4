//! `eventfold verify` on damaged stores: a record whose bytes are wrong is
//! listed as a fault (and the command fails); a damaged table file is
//! named.

mod common;

use common::*;
use eventfold_domain::{ExpectedVersion, Metadata, NewEvent, StreamId};
use eventfold_storage::{EventStore, RocksStore, StoreOptions};
use std::path::Path;

/// 50 events over 5 streams, compacted into table files, closed.
fn written(dir: &Path) -> TestResult {
    let store = RocksStore::open(dir, StoreOptions::default())?;
    for i in 0..50 {
        let stream = StreamId::new(format!("acc-{}", i % 5))?;
        let payload = format!("event {i} {}", "x".repeat(200)).into_bytes();
        let event = NewEvent::new("Deposited", 1, payload, Metadata::new());
        store.append(&stream, ExpectedVersion::Any, vec![event])?;
    }
    store.compact()?;
    store.close();
    Ok(())
}

#[test]
fn verify_lists_a_record_whose_bytes_are_wrong() -> TestResult {
    let dir = tempfile::tempdir()?;
    written(dir.path())?;
    let store = dir.path().to_str().unwrap_or_default();
    assert_eq!(json(&["verify", store])?["clean"], true);
    {
        // A bad write below eventfold: the record at position 10 replaced.
        let families = rocksdb::DB::list_cf(&rocksdb::Options::default(), dir.path())?;
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), dir.path(), families)?;
        let global = db.cf_handle("global").ok_or("no global keyspace")?;
        db.put_cf(global, 10u64.to_be_bytes(), b"not a record")?;
    }
    let output = run(&["--json", "verify", store])?;
    assert_eq!(output.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    assert_eq!(report["clean"], false);
    let faults = report["faults"].as_array().ok_or("no faults")?;
    assert!(
        faults
            .iter()
            .any(|f| f["keyspace"] == "global" && f["key_hex"] == "000000000000000a"),
        "{report}"
    );
    assert!(String::from_utf8(output.stderr)?.contains("fault(s)"));
    let table = run(&["verify", store])?;
    assert!(String::from_utf8(table.stdout)?.contains("000000000000000a"));
    Ok(())
}

#[test]
fn verify_names_a_damaged_table_file() -> TestResult {
    let dir = tempfile::tempdir()?;
    written(dir.path())?;
    let global_files: Vec<String> = {
        let families = rocksdb::DB::list_cf(&rocksdb::Options::default(), dir.path())?;
        let db = rocksdb::DB::open_cf_for_read_only(
            &rocksdb::Options::default(),
            dir.path(),
            families,
            false,
        )?;
        db.live_files()?
            .into_iter()
            .filter(|f| f.column_family_name == "global")
            .map(|f| f.name.trim_start_matches('/').to_owned())
            .collect()
    };
    let mut damaged = 0;
    for name in global_files {
        let path = dir.path().join(name);
        {
            let mut bytes = std::fs::read(&path)?;
            // Inside the data blocks, clear of the footer.
            let middle = bytes.len() / 3;
            for byte in &mut bytes[middle..middle + 64] {
                *byte ^= 0xa5;
            }
            std::fs::write(&path, bytes)?;
            damaged += 1;
        }
    }
    assert!(damaged > 0, "no table file to damage");
    let error = fails(&["verify", dir.path().to_str().unwrap_or_default()])?;
    assert!(error.contains(".sst"), "{error}");
    Ok(())
}
