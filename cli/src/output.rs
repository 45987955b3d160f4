//! How results are shown: a table for people, JSON (`--json`) for scripts;
//! events in one shape for `read` and `tail`.

use crate::decode::{Decoded, Decoders, hex};
use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use eventfold_domain::{RecordedEvent, Timestamp};
use serde::Serialize;
use serde_json::Value;
use std::io::Write;

/// Longest payload shown in a table cell (JSON shows it whole).
pub(crate) const PAYLOAD_CELL_CHARS_MAX: usize = 96;

/// Where a command writes, and how.
pub(crate) struct Out<'a> {
    pub json: bool,
    pub writer: &'a mut dyn Write,
}

impl Out<'_> {
    /// `value` as JSON (one line) under `--json`, else the table `table`
    /// makes.
    pub(crate) fn show<T: Serialize>(
        &mut self,
        value: &T,
        table: impl FnOnce() -> Table,
    ) -> Result<(), crate::CliError> {
        if self.json {
            serde_json::to_writer(&mut *self.writer, value)?;
            writeln!(self.writer)?;
        } else {
            writeln!(self.writer, "{}", table())?;
        }
        Ok(())
    }
}

/// A table with `header`, as wide as the terminal allows.
pub(crate) fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.iter().copied());
    table
}

/// A time as RFC 3339 with microseconds (UTC).
pub(crate) fn time(at: Timestamp) -> String {
    let system = std::time::UNIX_EPOCH + std::time::Duration::from_micros(at.as_micros());
    humantime::format_rfc3339_micros(system).to_string()
}

/// An optional value for a table cell.
pub(crate) fn cell<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// One event as `read` and `tail` show it.
#[derive(Serialize)]
pub(crate) struct EventView {
    pub position: u64,
    pub stream: String,
    pub version: u64,
    pub recorded_at: String,
    pub recorded_at_micros: u64,
    pub event_type: String,
    pub schema_version: u16,
    pub event_id: String,
    pub correlation_id: Option<String>,
    pub causation_id: Option<String>,
    pub headers: Vec<(String, String)>,
    /// The payload decoded and upcast to its current shape: one value, or
    /// an array when an upcaster made several (or none).
    pub payload: Option<Value>,
    /// The stored bytes as hex, when no decoder knows the event.
    pub payload_hex: Option<String>,
    /// Why a decoder that knows the event could not decode it.
    pub decode_error: Option<String>,
    /// The type names of its current shapes (after upcasting).
    #[serde(skip)]
    pub current_types: Vec<String>,
}

impl EventView {
    pub(crate) fn of(event: &RecordedEvent, decoders: &Decoders) -> Self {
        let mut current_types = vec![event.event_type.clone()];
        let (payload, payload_hex, decode_error) = match decoders.decode(event) {
            Decoded::Json(shapes) => {
                let (types, mut values): (Vec<_>, Vec<_>) = shapes.into_iter().unzip();
                current_types = types;
                if values.len() == 1 {
                    (values.pop(), None, None)
                } else {
                    (Some(Value::Array(values)), None, None)
                }
            }
            Decoded::Unknown => (None, Some(hex(&event.payload)), None),
            Decoded::Failed(why) => (None, Some(hex(&event.payload)), Some(why)),
        };
        let metadata = &event.metadata;
        Self {
            position: event.position,
            stream: event.stream_id.as_str().to_owned(),
            version: event.version,
            recorded_at: time(event.recorded_at),
            recorded_at_micros: event.recorded_at.as_micros(),
            event_type: event.event_type.clone(),
            schema_version: event.schema_version,
            event_id: metadata.event_id.to_string(),
            correlation_id: metadata.correlation_id.map(|c| c.to_string()),
            causation_id: metadata.causation_id.map(|c| c.to_string()),
            headers: metadata.headers.clone(),
            payload,
            payload_hex,
            decode_error,
            current_types,
        }
    }

    /// The table's header for events.
    pub(crate) const HEADER: [&'static str; 7] = [
        "position",
        "stream",
        "version",
        "recorded at",
        "type",
        "schema",
        "payload / metadata",
    ];

    /// The event as a table row.
    pub(crate) fn row(&self) -> Vec<String> {
        let mut payload = match (&self.payload, &self.decode_error) {
            (Some(value), _) => value.to_string(),
            (None, Some(why)) => {
                format!("undecodable ({why}): {}", cell(self.payload_hex.as_ref()))
            }
            (None, None) => format!("hex {}", cell(self.payload_hex.as_ref())),
        };
        if payload.chars().count() > PAYLOAD_CELL_CHARS_MAX {
            payload = payload
                .chars()
                .take(PAYLOAD_CELL_CHARS_MAX)
                .collect::<String>()
                + "…";
        }
        let mut metadata = Vec::new();
        if let Some(c) = &self.correlation_id {
            metadata.push(format!("correlation {c}"));
        }
        if let Some(c) = &self.causation_id {
            metadata.push(format!("causation {c}"));
        }
        metadata.extend(self.headers.iter().map(|(k, v)| format!("{k}: {v}")));
        if !metadata.is_empty() {
            payload = format!("{payload}\n{}", metadata.join("\n"));
        }
        vec![
            self.position.to_string(),
            self.stream.clone(),
            self.version.to_string(),
            self.recorded_at.clone(),
            self.event_type.clone(),
            self.schema_version.to_string(),
            payload,
        ]
    }
}

/// Events as a table, or one JSON object per line.
pub(crate) fn events(out: &mut Out<'_>, views: &[EventView]) -> Result<(), crate::CliError> {
    if out.json {
        for view in views {
            serde_json::to_writer(&mut *out.writer, view)?;
            writeln!(out.writer)?;
        }
        return Ok(());
    }
    let mut table = table(&EventView::HEADER);
    for view in views {
        table.add_row(view.row());
    }
    writeln!(out.writer, "{table}")?;
    Ok(())
}
