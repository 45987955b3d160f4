//! The bank behind HTTP: eventfold embedded in an axum service, with the
//! balances projection and the transfers process manager.
//!
//! ```text
//! bank-service --listen 127.0.0.1:8080 [--data DIR | --temporary]
//! POST /accounts/{id}/open      {"owner": "ann"}
//! POST /accounts/{id}/deposit   {"amount": 100}
//! POST /accounts/{id}/withdraw  {"amount": 30}
//! POST /transfers               {"from": "a", "to": "b", "amount": 5}
//! GET  /accounts/{id}[?after=POSITION]
//! GET  /events[?from=POSITION&category=C&type=T]   server-sent events
//! GET  /health, GET /metrics
//! /admin/...: parked events, stuck instances, backup (bearer token)
//! ```
//!
//! An `Idempotency-Key` header becomes the command id: a retry with the same
//! key gets the original answer. Every error is JSON with a stable `code`.
//! SIGTERM or SIGINT: stop accepting, answer what is in flight, drain the
//! runtime, exit 0.

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use eventfold_examples::balances::{self, Balances};
use eventfold_examples::transfers::TransferProcess;
use eventfold_examples::{Account, AccountCommand, AccountEvent};
use eventfold_runtime::domain::{CommandId, CorrelationId, RecordedEvent};
use eventfold_runtime::process::ProcessSettings;
use eventfold_runtime::storage::Filter;
use eventfold_runtime::{
    CommandOutcome, ConsumerSettings, ExecuteOptions, ProjectionError, Runtime, RuntimeHandle,
};
use futures::StreamExt;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;
use serde_json::json;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, watch};
use tower::limit::ConcurrencyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

/// Largest request body, in bytes.
const BODY_BYTES_MAX: usize = 16 * 1024;
/// Requests served at once; more wait for a slot.
const CONCURRENT_REQUESTS_MAX: usize = 1024;
/// Longest a request may take before the service answers 408.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a read waits for the balances projection to pass `after`.
const READ_YOUR_WRITES_WAIT_MAX: Duration = Duration::from_secs(5);
/// Longest an account id, in bytes.
const ACCOUNT_ID_BYTES_MAX: usize = 128;
/// Event feeds (`/events`) open at once; more are refused with 503.
const FEEDS_MAX: usize = 256;

mod admin;
mod page;
mod problem;
mod server;

use problem::Problem;

/// The bank over HTTP.
#[derive(Parser, Debug)]
#[command(name = "bank-service")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Keep the store in this directory (default: a temporary one).
    #[arg(long, conflicts_with = "temporary")]
    data: Option<PathBuf>,
    /// Keep the store in a temporary directory, removed at exit.
    #[arg(long)]
    temporary: bool,
    /// The bearer token the admin routes require (none: they refuse all).
    #[arg(long, env = "EVENTFOLD_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Connections open at once; past it the rest wait to be accepted.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    connections_max: u32,
    /// Seconds a connection may take to send a request's head (or stay
    /// idle between requests) before it is closed.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    header_read_timeout: u64,
}

#[derive(Clone)]
struct App {
    runtime: RuntimeHandle,
    metrics: PrometheusHandle,
    /// One permit per open event feed.
    feeds: Arc<Semaphore>,
    /// Set when the service stops: open feeds end, so that the graceful
    /// shutdown does not wait for clients that never hang up.
    stopping: watch::Receiver<bool>,
    /// The admin routes' bearer token.
    admin_token: Option<Arc<str>>,
}

fn account_id(id: &str) -> Result<&str, Problem> {
    let valid = !id.is_empty()
        && id.len() <= ACCOUNT_ID_BYTES_MAX
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
    if valid {
        Ok(id)
    } else {
        Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_account_id",
            format!("account ids are 1 to {ACCOUNT_ID_BYTES_MAX} letters, digits, '_' or '.'"),
        ))
    }
}

fn options(headers: &HeaderMap) -> Result<ExecuteOptions, Problem> {
    let mut options = ExecuteOptions::new();
    if let Some(key) = headers.get("idempotency-key") {
        let key = key.to_str().map_err(|_| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "bad_idempotency_key",
                "the Idempotency-Key must be visible ASCII",
            )
        })?;
        options = options.command_id(CommandId::from_name(key));
    }
    if let Some(id) = headers.get("x-correlation-id") {
        let id = id
            .to_str()
            .ok()
            .and_then(|id| uuid::Uuid::parse_str(id).ok())
            .ok_or_else(|| {
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    "bad_correlation_id",
                    "the X-Correlation-Id must be a UUID",
                )
            })?;
        options = options.correlation_id(CorrelationId::from(id));
    }
    Ok(options)
}

fn answer(outcome: CommandOutcome<eventfold_examples::AccountEvent>) -> Response {
    let body = json!({
        "version": outcome.version,
        "position": outcome.position,
        "deduplicated": outcome.deduplicated,
    });
    (StatusCode::OK, Json(body)).into_response()
}

async fn execute(
    app: &App,
    id: &str,
    command: AccountCommand,
    headers: &HeaderMap,
) -> Result<Response, Problem> {
    let id = account_id(id)?;
    let options = options(headers)?;
    let outcome = app
        .runtime
        .execute_with::<Account>(id, command, options)
        .await?;
    Ok(answer(outcome))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Open {
    owner: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Amount {
    amount: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Transfer {
    from: String,
    to: String,
    amount: u64,
}

async fn open(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Json<Open>, JsonRejection>,
) -> Result<Response, Problem> {
    let Json(Open { owner }) = body?;
    execute(&app, &id, AccountCommand::Open { owner }, &headers).await
}

async fn deposit(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Json<Amount>, JsonRejection>,
) -> Result<Response, Problem> {
    let amount = body?.0.amount;
    execute(&app, &id, AccountCommand::Deposit { amount }, &headers).await
}

async fn withdraw(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Json<Amount>, JsonRejection>,
) -> Result<Response, Problem> {
    let amount = body?.0.amount;
    execute(&app, &id, AccountCommand::Withdraw { amount }, &headers).await
}

async fn transfer(
    State(app): State<App>,
    headers: HeaderMap,
    body: Result<Json<Transfer>, JsonRejection>,
) -> Result<Response, Problem> {
    let Json(Transfer { from, to, amount }) = body?;
    account_id(&to)?;
    // The transfer's id: the idempotency key when there is one, so that a
    // retry names the same transfer.
    let transfer_id = match headers.get("idempotency-key").and_then(|k| k.to_str().ok()) {
        Some(key) => format!("t-{key}"),
        None => format!("t-{}", CommandId::random()),
    };
    let command = AccountCommand::TransferOut {
        transfer_id: transfer_id.clone(),
        to,
        amount,
    };
    let response = execute(&app, &from, command, &headers).await?;
    let mut response = response;
    if let Ok(value) = HeaderValue::from_str(&transfer_id) {
        response.headers_mut().insert("transfer-id", value);
    }
    Ok(response)
}

#[derive(Deserialize)]
struct After {
    after: Option<u64>,
}

async fn balance(
    State(app): State<App>,
    Path(id): Path<String>,
    Query(after): Query<After>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let id = account_id(&id)?;
    let after = match (after.after, headers.get("x-after-position")) {
        (Some(position), _) => Some(position),
        (None, Some(header)) => Some(
            header
                .to_str()
                .ok()
                .and_then(|p| p.parse::<u64>().ok())
                .ok_or_else(|| {
                    Problem::new(
                        StatusCode::BAD_REQUEST,
                        "bad_position",
                        "X-After-Position must be a position (an unsigned integer)",
                    )
                })?,
        ),
        (None, None) => None,
    };
    if let Some(position) = after {
        let waited = app
            .runtime
            .wait_for(balances::NAME, position, READ_YOUR_WRITES_WAIT_MAX)
            .await;
        match waited {
            Ok(()) => {}
            Err(ProjectionError::Timeout { .. }) => {
                return Err(Problem::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "not_caught_up",
                    format!("the balances had not reached position {position}; retry"),
                ));
            }
            Err(error) => return Err(internal(error)),
        }
    }
    let key = format!("acc-{id}");
    let view = app.runtime.query(balances::NAME).map_err(internal)?;
    match view.get_as::<i128>(key.as_bytes()).map_err(internal)? {
        Some(balance) => Ok(Json(json!({"id": id, "balance": balance})).into_response()),
        None => Err(Problem::new(
            StatusCode::NOT_FOUND,
            "unknown_account",
            format!("no account {id}"),
        )),
    }
}

fn internal(error: impl std::fmt::Display) -> Problem {
    Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        error.to_string(),
    )
}

#[derive(Deserialize)]
struct Feed {
    /// The first position to send (default: 1).
    from: Option<u64>,
    /// Only events of streams of this category.
    category: Option<String>,
    /// Only events of this type.
    r#type: Option<String>,
    /// `false`: events are not named by their type, so a browser's
    /// `EventSource.onmessage` gets every one (default: named).
    named: Option<bool>,
}

/// The global log as server-sent events: caught up from the store, then
/// live; each event once, in position order, however slowly the client
/// reads (the feed reads on only as the client takes). Each event's `id`
/// is its position: a client that reconnects with `Last-Event-ID` goes on
/// after it.
async fn events(
    State(app): State<App>,
    Query(feed): Query<Feed>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let permit = Arc::clone(&app.feeds)
        .try_acquire_owned()
        .map_err(|_| Problem {
            retry_after: Some(1),
            ..Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_feeds",
                format!("{FEEDS_MAX} event feeds are open"),
            )
        })?;
    let resumed = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let after = resumed.unwrap_or_else(|| feed.from.unwrap_or(1).saturating_sub(1));
    let named = feed.named.unwrap_or(true);
    let filter = Filter {
        event_types: feed.r#type.into_iter().collect(),
        categories: feed.category.into_iter().collect(),
    };
    let mut stopping = app.stopping.clone();
    let stopped = async move {
        let _ = stopping.wait_for(|stopping| *stopping).await;
    };
    let stream = app
        .runtime
        .subscribe_from(after, filter)
        .take_until(stopped)
        .map(move |item| {
            // The permit goes when the client does.
            let _held = &permit;
            Ok::<_, Infallible>(match item {
                Ok(event) => feed_event(&event, named),
                Err(error) => SseEvent::default().event("error").data(error.to_string()),
            })
        });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// One event as an SSE event: its position as id, its type as the event
/// name (unless `named` is false), JSON data with the bank's decoded event
/// when it is one.
fn feed_event(event: &RecordedEvent, named: bool) -> SseEvent {
    let sse = SseEvent::default()
        .id(event.position.to_string())
        .data(event_json(event).to_string());
    if named {
        sse.event(event.event_type.clone())
    } else {
        sse
    }
}

/// One event as JSON (the feed's data, the admin page's rows), with the
/// bank's decoded event when it is one.
pub(crate) fn event_json(event: &RecordedEvent) -> serde_json::Value {
    let decoded = eventfold_runtime::evolution::decode::<AccountEvent>(event)
        .ok()
        .and_then(|e| serde_json::to_value(e).ok());
    json!({
        "position": event.position,
        "stream": event.stream_id.as_str(),
        "version": event.version,
        "type": event.event_type,
        "schema_version": event.schema_version,
        "recorded_at_micros": event.recorded_at.as_micros(),
        "correlation_id": event.metadata.correlation_id.map(|id| id.to_string()),
        "causation_id": event.metadata.causation_id.map(|id| id.to_string()),
        "event": decoded,
    })
}

async fn health(State(app): State<App>) -> Response {
    let statuses = app.runtime.projection_status(balances::NAME);
    match statuses {
        Ok(_) => Json(json!({"status": "ok"})).into_response(),
        Err(error) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unhealthy",
            error.to_string(),
        )
        .into_response(),
    }
}

async fn prometheus(State(app): State<App>) -> Response {
    let body = app.metrics.render();
    let content_type = HeaderValue::from_static("text/plain; version=0.0.4");
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

fn router(app: App) -> Router {
    Router::new()
        .route("/accounts/{id}/open", post(open))
        .route("/accounts/{id}/deposit", post(deposit))
        .route("/accounts/{id}/withdraw", post(withdraw))
        .route("/accounts/{id}", get(balance))
        .route("/transfers", post(transfer))
        .route("/events", get(events))
        .route("/health", get(health))
        .route("/metrics", get(prometheus))
        .merge(admin::routes())
        .merge(page::routes())
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        // A span per request (method, path), around the runtime's command
        // spans: the correlation id of a request's events is its
        // X-Correlation-Id, when it sends one.
        .layer(TraceLayer::new_for_http())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(ConcurrencyLimitLayer::new(CONCURRENT_REQUESTS_MAX))
        .with_state(app)
}

async fn stopped() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let served = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|tokio| tokio.block_on(serve(args)));
    match served {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "bank-service stopped");
            eprintln!("bank-service: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> Result<(), String> {
    let metrics = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| format!("metrics: {e}"))?;
    let builder = match &args.data {
        Some(dir) => Runtime::builder().path(dir),
        None => Runtime::builder().temporary(),
    };
    let runtime = builder
        .aggregate::<Account>()
        .projection(|| Balances, ConsumerSettings::default())
        .process_manager(TransferProcess::default, ProcessSettings::default())
        .start()
        .map_err(|e| format!("the runtime did not start: {e}"))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let (stop_feeds, _) = watch::channel(false);
    tracing::info!(address = %local, "bank-service listening");
    println!("listening on {local}");
    let app = App {
        runtime: runtime.clone(),
        metrics,
        feeds: Arc::new(Semaphore::new(FEEDS_MAX)),
        stopping: stop_feeds.subscribe(),
        admin_token: args.admin_token.as_deref().map(Arc::from),
    };
    let limits = server::Limits {
        connections_max: args.connections_max as usize,
        header_read_timeout: Duration::from_secs(args.header_read_timeout),
    };
    server::run(listener, router(app), limits, async move {
        stopped().await;
        tracing::info!("stopping: no new connections, finishing requests in flight");
        let _ = stop_feeds.send(true);
    })
    .await;
    tracing::info!("draining the runtime");
    runtime
        .shutdown()
        .await
        .map_err(|e| format!("shutdown: {e}"))
}
