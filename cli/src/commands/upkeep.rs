//! The store's upkeep: verify (read-only, beside the holder), restore,
//! upgrade, salvage (the store closed), stats.

use super::log::open_read_only;
use crate::CliError;
use crate::error::Action;
use crate::output::{self, Out};
use crate::progress;
use eventfold_storage::{EventStore, OpenError, RocksStore, StoreOptions};
use serde::Serialize;
use serde_json::json;
use std::path::Path;

#[derive(Serialize)]
struct FaultRow {
    keyspace: &'static str,
    key_hex: String,
    fault: String,
}

#[derive(Serialize)]
struct VerifyRow {
    events: u64,
    streams: u64,
    clean: bool,
    faults: Vec<FaultRow>,
}

/// Walks the store; its faults are listed and the command fails when it
/// found any.
pub(crate) fn verify(out: &mut Out<'_>, path: &Path) -> Result<(), CliError> {
    let store = open_read_only(path)?;
    let bar = progress::bar("verifying", store.head());
    let report = store.verify_with_progress(&|walked| bar.set_position(walked));
    bar.finish_and_clear();
    let report = report?;
    let row = VerifyRow {
        events: report.events,
        streams: report.streams,
        clean: report.is_clean(),
        faults: report
            .faults
            .iter()
            .map(|f| FaultRow {
                keyspace: f.corruption.keyspace,
                key_hex: crate::decode::hex(&f.corruption.key),
                fault: f.corruption.to_string(),
            })
            .collect(),
    };
    out.show(&row, || {
        let mut table = output::table(&["events", "streams", "faults"]);
        table.add_row(vec![
            row.events.to_string(),
            row.streams.to_string(),
            row.faults.len().to_string(),
        ]);
        table
    })?;
    if !row.faults.is_empty() {
        if !out.json {
            let mut table = output::table(&["keyspace", "key (hex)", "fault"]);
            for f in &row.faults {
                table.add_row(vec![
                    f.keyspace.to_owned(),
                    f.key_hex.clone(),
                    f.fault.clone(),
                ]);
            }
            writeln!(out.writer, "{table}")?;
        }
        return Err(CliError::Faults(row.faults.len()));
    }
    Ok(())
}

pub(crate) fn restore(out: &mut Out<'_>, backup: &Path, target: &Path) -> Result<(), CliError> {
    let bar = progress::spinner("restoring");
    let restored = RocksStore::restore(backup, target);
    bar.finish_and_clear();
    restored?;
    let answer =
        json!({"restored": target.display().to_string(), "from": backup.display().to_string()});
    out.show(&answer, || {
        let mut table = output::table(&["restored into", "from backup"]);
        table.add_row(vec![
            target.display().to_string(),
            backup.display().to_string(),
        ]);
        table
    })
}

pub(crate) fn upgrade(out: &mut Out<'_>, path: &Path) -> Result<(), CliError> {
    let bar = progress::spinner("upgrading");
    let report = RocksStore::upgrade(path);
    bar.finish_and_clear();
    let report = report.map_err(|e| match e {
        OpenError::InUse(path) => CliError::InUse {
            path,
            action: Action::Upgrade,
        },
        other => other.into(),
    })?;
    let answer = json!({
        "from": report.from,
        "events_indexed": report.events_indexed,
        "elapsed_ms": report.elapsed.as_millis() as u64,
    });
    out.show(&answer, || {
        let mut table = output::table(&["from format", "index entries written", "elapsed"]);
        table.add_row(vec![
            report.from.clone(),
            report.events_indexed.to_string(),
            format!("{:?}", report.elapsed),
        ]);
        table
    })
}

pub(crate) fn salvage(out: &mut Out<'_>, path: &Path) -> Result<(), CliError> {
    if !path.join("CURRENT").is_file() {
        return Err(OpenError::Missing(path.to_path_buf()).into());
    }
    let (store, report) =
        RocksStore::open_salvaging(path, StoreOptions::default()).map_err(|e| match e {
            OpenError::InUse(path) => CliError::InUse {
                path,
                action: Action::Salvage,
            },
            other => other.into(),
        })?;
    store.close();
    let answer = json!({
        "damage": report.damage.as_ref().map(|d| d.to_string()),
        "head": report.head,
        "last_position_found": report.last_position_found,
        "positions_lost": report.positions_lost,
        "logs_copied_to": report.kept_logs.as_ref().map(|p| p.display().to_string()),
    });
    out.show(&answer, || {
        let mut table = output::table(&[
            "damage",
            "head kept",
            "last position found",
            "positions lost",
            "logs copied to",
        ]);
        table.add_row(vec![
            output::cell(report.damage.as_ref()),
            report.head.to_string(),
            report.last_position_found.to_string(),
            report.positions_lost.to_string(),
            output::cell(report.kept_logs.as_ref().map(|p| p.display())),
        ]);
        table
    })
}

#[derive(Serialize)]
struct KeyspaceRow {
    keyspace: &'static str,
    estimated_keys: u64,
    table_bytes: u64,
    memtable_bytes: u64,
}

#[derive(Serialize)]
struct StatsRow {
    head: u64,
    streams: u64,
    directory_bytes: u64,
    keyspaces: Vec<KeyspaceRow>,
}

pub(crate) fn stats(out: &mut Out<'_>, path: &Path) -> Result<(), CliError> {
    let store = open_read_only(path)?;
    let streams = store.list_streams(None, usize::MAX)?.len() as u64;
    let keyspaces: Vec<_> = store
        .keyspace_stats()?
        .into_iter()
        .map(|k| KeyspaceRow {
            keyspace: k.keyspace,
            estimated_keys: k.estimated_keys,
            table_bytes: k.table_bytes,
            memtable_bytes: k.memtable_bytes,
        })
        .collect();
    let row = StatsRow {
        head: store.head(),
        streams,
        directory_bytes: directory_bytes(path)?,
        keyspaces,
    };
    out.show(&row, || {
        let mut table = output::table(&[
            "keyspace",
            "keys (estimated)",
            "table bytes",
            "memtable bytes",
        ]);
        for k in &row.keyspaces {
            table.add_row(vec![
                k.keyspace.to_owned(),
                k.estimated_keys.to_string(),
                k.table_bytes.to_string(),
                k.memtable_bytes.to_string(),
            ]);
        }
        table.add_row(vec![
            format!("events (head) {}, streams {}", row.head, row.streams),
            String::new(),
            format!("directory {}", row.directory_bytes),
            String::new(),
        ]);
        table
    })
}

/// Bytes of the files directly in `path` (the store's files).
fn directory_bytes(path: &Path) -> Result<u64, CliError> {
    let mut total = 0;
    for entry in std::fs::read_dir(path)? {
        let metadata = entry?.metadata()?;
        if metadata.is_file() {
            total += metadata.len();
        }
    }
    Ok(total)
}
