//! The admin page: `/admin` (plain HTML and a little script, no build
//! step) and the read-only JSON it draws from, under `/admin/api` behind
//! the admin token: an overview (head, projections with lag and parked
//! events, process managers with stuck instances), the streams, one
//! stream's events. Its actions go through the admin routes of `admin.rs`;
//! the live tail is `/events`, the chart `/metrics`.

use super::admin::authorized;
use super::{App, Problem, event_json};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use eventfold_runtime::domain::StreamId;
use eventfold_runtime::inspect::{self, InspectError};
use eventfold_runtime::storage::{Direction, EventStore, ReadError, RocksStore};
use serde::Deserialize;
use serde_json::{Value, json};

/// The page itself.
const PAGE: &str = include_str!("admin.html");
/// Most streams one listing returns.
pub(crate) const STREAMS_PAGE_MAX: usize = 1_000;
/// Most events one stream read returns.
pub(crate) const EVENTS_PAGE_MAX: usize = 500;

pub(crate) fn routes() -> Router<App> {
    Router::new()
        .route("/admin", get(page))
        .route("/admin/api/overview", get(overview))
        .route("/admin/api/streams", get(streams))
        .route("/admin/api/streams/{id}/events", get(stream_events))
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            // Its own script and styles only; it talks to this service alone.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'",
            ),
        ],
        PAGE,
    )
        .into_response()
}

fn store_problem(error: impl std::fmt::Display) -> Problem {
    Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "store",
        error.to_string(),
    )
}

/// Runs `read` on the runtime's RocksDB store on the blocking pool.
async fn on_store<T: Send + 'static>(
    app: &App,
    read: impl FnOnce(&RocksStore) -> Result<T, Problem> + Send + 'static,
) -> Result<T, Problem> {
    let runtime = app.runtime.clone();
    tokio::task::spawn_blocking(move || match runtime.rocks_store() {
        Some(store) => read(store),
        None => Err(Problem::new(
            StatusCode::NOT_IMPLEMENTED,
            "not_rocksdb",
            "the runtime's store is not RocksDB",
        )),
    })
    .await
    .map_err(store_problem)?
}

async fn overview(State(app): State<App>, headers: HeaderMap) -> Result<Response, Problem> {
    authorized(&app, &headers)?;
    let value = on_store(&app, |store| {
        let read = |e: InspectError| store_problem(e);
        let consumers = inspect::projections(store).map_err(read)?;
        let mut parked = serde_json::Map::new();
        for name in consumers.iter().map(|c| c.name.clone()) {
            if parked.contains_key(&name) {
                continue;
            }
            let events = match inspect::parked(store, &name) {
                Ok(events) => events,
                // Only retired or rebuilding versions: nothing active parks.
                Err(InspectError::Unknown(_)) => Vec::new(),
                Err(other) => return Err(read(other)),
            };
            let list: Vec<_> = events
                .iter()
                .map(|p| json!({"position": p.position, "stream": p.stream, "reason": p.reason, "attempts": p.attempts}))
                .collect();
            parked.insert(name, Value::Array(list));
        }
        let processes = inspect::processes(store).map_err(read)?;
        let mut stuck = serde_json::Map::new();
        for process in &processes {
            let list: Vec<_> = inspect::stuck(store, &process.name)
                .map_err(read)?
                .iter()
                .map(|s| json!({"id": s.id, "error": s.error, "attempts": s.attempts, "input": s.input, "held_events": s.held_events}))
                .collect();
            stuck.insert(process.name.clone(), Value::Array(list));
        }
        Ok(json!({
            "head": store.head(),
            "projections": consumers.iter().map(|c| json!({
                "name": c.name, "version": c.version, "consumer": c.consumer,
                "checkpoint": c.checkpoint, "head": c.head, "lag": c.lag,
                "state": c.role.as_str(), "parked": c.parked,
            })).collect::<Vec<_>>(),
            "parked": parked,
            "processes": processes.iter().map(|p| json!({
                "name": p.name, "checkpoint": p.checkpoint, "head": p.head, "lag": p.lag,
                "instances": p.instances, "stuck": p.stuck, "outbox": p.outbox,
                "timers": p.timers, "timers_due": p.timers_due,
            })).collect::<Vec<_>>(),
            "stuck": stuck,
        }))
    })
    .await?;
    Ok(Json(value).into_response())
}

#[derive(Deserialize)]
struct StreamsQuery {
    category: Option<String>,
    limit: Option<usize>,
}

async fn streams(
    State(app): State<App>,
    Query(query): Query<StreamsQuery>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    authorized(&app, &headers)?;
    let limit = query.limit.unwrap_or(100).min(STREAMS_PAGE_MAX);
    let list = on_store(&app, move |store| {
        let mut streams = store
            .list_streams(query.category.as_deref(), limit)
            .map_err(store_problem)?;
        streams.sort_by(|a, b| a.stream.as_str().cmp(b.stream.as_str()));
        Ok(streams
            .iter()
            .map(|s| {
                json!({
                    "stream": s.stream.as_str(), "version": s.version,
                    "first_version": s.first_version, "first_position": s.first_position,
                    "last_position": s.last_position,
                    "last_written_micros": s.last_recorded_at.map(|t| t.as_micros()),
                    "tombstoned": s.tombstoned,
                })
            })
            .collect::<Vec<_>>())
    })
    .await?;
    Ok(Json(list).into_response())
}

#[derive(Deserialize)]
struct EventsQuery {
    from: Option<u64>,
    backward: Option<bool>,
    count: Option<usize>,
}

async fn stream_events(
    State(app): State<App>,
    Path(id): Path<String>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    authorized(&app, &headers)?;
    let stream = StreamId::new(id)
        .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, "bad_stream_id", e.to_string()))?;
    let count = query.count.unwrap_or(100).min(EVENTS_PAGE_MAX);
    let (from, direction) = if query.backward.unwrap_or(false) {
        (query.from.unwrap_or(u64::MAX), Direction::Backward)
    } else {
        (query.from.unwrap_or(1), Direction::Forward)
    };
    let list = on_store(&app, move |store| {
        let events = store
            .read_stream(&stream, from, direction, count)
            .map_err(|e: ReadError| store_problem(e))?;
        Ok(events.iter().map(event_json).collect::<Vec<_>>())
    })
    .await?;
    Ok(Json(list).into_response())
}
