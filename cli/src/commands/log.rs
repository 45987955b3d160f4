//! What the log holds: streams, one stream's events, the global log (live
//! with `--follow`). The store is opened read-only, beside its holder.

use crate::CliError;
use crate::decode::Decoders;
use crate::output::{self, EventView, Out, cell, time};
use eventfold_domain::StreamId;
use eventfold_storage::{Direction, EventStore, Filter, RocksStore, StoreOptions};
use serde::Serialize;
use std::path::Path;
use std::time::Duration;

/// Events read from the global log at a time.
pub(crate) const TAIL_CHUNK_EVENTS: usize = 1_000;
/// How often `tail --follow` looks for new events when it has seen all.
pub(crate) const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// The store at `path`, read-only beside whoever holds it.
pub(crate) fn open_read_only(path: &Path) -> Result<RocksStore, CliError> {
    Ok(RocksStore::open_secondary(path, StoreOptions::default())?)
}

#[derive(Serialize)]
struct StreamRow {
    stream: String,
    version: u64,
    first_version: u64,
    first_position: Option<u64>,
    last_position: Option<u64>,
    last_written: Option<String>,
    last_written_micros: Option<u64>,
    tombstoned: bool,
}

pub(crate) fn streams(
    out: &mut Out<'_>,
    path: &Path,
    category: Option<&str>,
    limit: usize,
) -> Result<(), CliError> {
    let store = open_read_only(path)?;
    let mut rows: Vec<StreamRow> = store
        .list_streams(category, limit)?
        .into_iter()
        .map(|s| StreamRow {
            stream: s.stream.as_str().to_owned(),
            version: s.version,
            first_version: s.first_version,
            first_position: s.first_position,
            last_position: s.last_position,
            last_written: s.last_recorded_at.map(time),
            last_written_micros: s.last_recorded_at.map(|t| t.as_micros()),
            tombstoned: s.tombstoned,
        })
        .collect();
    rows.sort_by(|a, b| a.stream.cmp(&b.stream));
    out.show(&rows, || {
        let mut table = output::table(&[
            "stream",
            "version",
            "first version",
            "first position",
            "last position",
            "last written",
            "state",
        ]);
        for r in &rows {
            let state = if r.tombstoned {
                "tombstoned"
            } else if r.first_version > r.version {
                "deleted"
            } else if r.first_version > 1 {
                "truncated"
            } else {
                "live"
            };
            table.add_row(vec![
                r.stream.clone(),
                r.version.to_string(),
                r.first_version.to_string(),
                cell(r.first_position),
                cell(r.last_position),
                cell(r.last_written.clone()),
                state.to_owned(),
            ]);
        }
        table
    })
}

pub(crate) fn read(
    out: &mut Out<'_>,
    decoders: &Decoders,
    path: &Path,
    stream: &str,
    from: Option<u64>,
    backward: bool,
    count: usize,
) -> Result<(), CliError> {
    let id = StreamId::new(stream).map_err(|e| CliError::StreamId(stream.to_owned(), e))?;
    let store = open_read_only(path)?;
    let (from, direction) = if backward {
        (from.unwrap_or(u64::MAX), Direction::Backward)
    } else {
        (from.unwrap_or(1), Direction::Forward)
    };
    let events = store.read_stream(&id, from, direction, count)?;
    let views: Vec<_> = events.iter().map(|e| EventView::of(e, decoders)).collect();
    output::events(out, &views)
}

/// What `tail` reads.
pub(crate) struct TailQuery {
    pub from: Option<u64>,
    pub category: Option<String>,
    pub event_type: Option<String>,
    pub follow: bool,
    pub count: Option<usize>,
}

pub(crate) fn tail(
    out: &mut Out<'_>,
    decoders: &Decoders,
    path: &Path,
    query: &TailQuery,
) -> Result<(), CliError> {
    let store = open_read_only(path)?;
    let mut filter = Filter::all();
    if let Some(category) = &query.category {
        filter = Filter::categories([category.clone()]);
    }
    if let Some(event_type) = &query.event_type {
        // Stored events of older type names upcast to this one are read too.
        filter = decoders
            .upcasters
            .widen(&Filter::event_types([event_type.clone()]));
    }
    let wanted = |e: &eventfold_domain::RecordedEvent| {
        query
            .category
            .as_ref()
            .is_none_or(|c| e.stream_id.category() == c)
    };
    // Without --from (and without --follow), the last --count events.
    let last = query.count.unwrap_or(20);
    let mut next = match query.from {
        Some(from) => from,
        None if query.follow && query.count.is_none() => store.head() + 1,
        None => store.head().saturating_sub(last as u64) + 1,
    };
    let mut left = if query.follow {
        query.count.unwrap_or(usize::MAX)
    } else {
        last
    };
    while left > 0 {
        let slice = store.read_all(next, TAIL_CHUNK_EVENTS.min(left), &filter)?;
        next = slice.next_position.max(next);
        let mut views = Vec::new();
        for event in slice.events.iter().filter(|e| wanted(e)) {
            let view = EventView::of(event, decoders);
            // A type filter applies to the current shape, after upcasting.
            if query
                .event_type
                .as_ref()
                .is_none_or(|t| *t == view.event_type || view.current_types.contains(t))
            {
                views.push(view);
            }
        }
        views.truncate(left);
        left -= views.len();
        if !views.is_empty() {
            output::events(out, &views)?;
            out.writer.flush()?;
        }
        if slice.events.is_empty() && next > slice.head {
            if !query.follow {
                break;
            }
            std::thread::sleep(FOLLOW_POLL);
            store.refresh()?;
        }
    }
    Ok(())
}
