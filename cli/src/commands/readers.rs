//! Where the readers stand: projections and their parked events, process
//! managers and their stuck instances. Read-only, beside the holder.

use super::log::open_read_only;
use crate::CliError;
use crate::output::{self, Out, time};
use eventfold_runtime::inspect;
use serde::Serialize;
use std::path::Path;

#[derive(Serialize)]
struct ConsumerRow {
    name: String,
    version: u32,
    consumer: String,
    checkpoint: u64,
    head: u64,
    lag: u64,
    state: &'static str,
    parked: u64,
}

pub(crate) fn projections(out: &mut Out<'_>, path: &Path) -> Result<(), CliError> {
    let store = open_read_only(path)?;
    let rows: Vec<_> = inspect::projections(&store)?
        .into_iter()
        .map(|c| ConsumerRow {
            name: c.name,
            version: c.version,
            consumer: c.consumer,
            checkpoint: c.checkpoint,
            head: c.head,
            lag: c.lag,
            state: c.role.as_str(),
            parked: c.parked,
        })
        .collect();
    out.show(&rows, || {
        let mut table = output::table(&[
            "projection",
            "version",
            "consumer",
            "checkpoint",
            "head",
            "lag",
            "state",
            "parked",
        ]);
        for r in &rows {
            table.add_row(vec![
                r.name.clone(),
                r.version.to_string(),
                r.consumer.clone(),
                r.checkpoint.to_string(),
                r.head.to_string(),
                r.lag.to_string(),
                r.state.to_owned(),
                r.parked.to_string(),
            ]);
        }
        table
    })
}

#[derive(Serialize)]
struct ParkedRow {
    position: u64,
    stream: String,
    attempts: u32,
    reason: String,
}

pub(crate) fn parked(out: &mut Out<'_>, path: &Path, name: &str) -> Result<(), CliError> {
    let store = open_read_only(path)?;
    let rows: Vec<_> = inspect::parked(&store, name)?
        .into_iter()
        .map(|p| ParkedRow {
            position: p.position,
            stream: p.stream,
            attempts: p.attempts,
            reason: p.reason,
        })
        .collect();
    out.show(&rows, || {
        let mut table = output::table(&["position", "stream", "attempts", "reason"]);
        for r in &rows {
            table.add_row(vec![
                r.position.to_string(),
                r.stream.clone(),
                r.attempts.to_string(),
                r.reason.clone(),
            ]);
        }
        table
    })
}

#[derive(Serialize)]
struct ProcessRow {
    name: String,
    checkpoint: u64,
    head: u64,
    lag: u64,
    instances: u64,
    stuck: u64,
    outbox: u64,
    timers: u64,
    timers_due: u64,
}

pub(crate) fn processes(out: &mut Out<'_>, path: &Path) -> Result<(), CliError> {
    let store = open_read_only(path)?;
    let rows: Vec<_> = inspect::processes(&store)?
        .into_iter()
        .map(|p| ProcessRow {
            name: p.name,
            checkpoint: p.checkpoint,
            head: p.head,
            lag: p.lag,
            instances: p.instances,
            stuck: p.stuck,
            outbox: p.outbox,
            timers: p.timers,
            timers_due: p.timers_due,
        })
        .collect();
    out.show(&rows, || {
        let mut table = output::table(&[
            "process manager",
            "checkpoint",
            "head",
            "lag",
            "instances",
            "stuck",
            "outbox",
            "timers",
            "timers due",
        ]);
        for r in &rows {
            table.add_row(vec![
                r.name.clone(),
                r.checkpoint.to_string(),
                r.head.to_string(),
                r.lag.to_string(),
                r.instances.to_string(),
                r.stuck.to_string(),
                r.outbox.to_string(),
                r.timers.to_string(),
                r.timers_due.to_string(),
            ]);
        }
        table
    })
}

#[derive(Serialize)]
struct StuckRow {
    id: String,
    since: String,
    attempts: u32,
    input: String,
    held_events: usize,
    error: String,
}

pub(crate) fn stuck(out: &mut Out<'_>, path: &Path, name: &str) -> Result<(), CliError> {
    let store = open_read_only(path)?;
    let rows: Vec<_> = inspect::stuck(&store, name)?
        .into_iter()
        .map(|s| StuckRow {
            id: s.id,
            since: time(s.since),
            attempts: s.attempts,
            input: s.input,
            held_events: s.held_events,
            error: s.error,
        })
        .collect();
    out.show(&rows, || {
        let mut table = output::table(&[
            "instance",
            "since",
            "attempts",
            "input",
            "held events",
            "error",
        ]);
        for r in &rows {
            table.add_row(vec![
                r.id.clone(),
                r.since.clone(),
                r.attempts.to_string(),
                r.input.clone(),
                r.held_events.to_string(),
                r.error.clone(),
            ]);
        }
        table
    })
}
