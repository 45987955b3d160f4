//! `bank-service`'s admin routes: parked events (list, retry, skip),
//! stuck process instances (list, resume, cancel) and a backup of the
//! running store. Each needs `Authorization: Bearer <token>` with the token
//! given by `--admin-token` (or `EVENTFOLD_ADMIN_TOKEN`); without one, or
//! when none was given, they answer 401 and do nothing.

use super::{App, Problem};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use eventfold_runtime::{ControlRefusal, ParkedError, ProcessError, ProjectionError};
use serde::Deserialize;
use serde_json::json;

/// The admin routes, under `/admin`.
pub(crate) fn routes() -> Router<App> {
    Router::new()
        .route("/admin/projections/{name}/parked", get(parked))
        .route(
            "/admin/projections/{name}/parked/{position}/{action}",
            post(resolve),
        )
        .route("/admin/processes/{name}/stuck", get(stuck))
        .route(
            "/admin/processes/{name}/instances/{id}/{action}",
            post(control),
        )
        .route("/admin/backup", post(backup))
}

/// Whether the request carries the admin token (compared without
/// stopping at the first differing byte).
pub(crate) fn authorized(app: &App, headers: &HeaderMap) -> Result<(), Problem> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let matches = match (&app.admin_token, given) {
        (Some(token), Some(given)) if token.len() == given.len() => {
            token
                .bytes()
                .zip(given.bytes())
                .fold(0u8, |diff, (a, b)| diff | (a ^ b))
                == 0
        }
        _ => false,
    };
    if matches {
        Ok(())
    } else {
        Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "admin routes need Authorization: Bearer with the service's admin token",
        ))
    }
}

fn projection_problem(error: ProjectionError) -> Problem {
    let message = error.to_string();
    let (status, code) = match &error {
        ProjectionError::Unknown(_) => (StatusCode::NOT_FOUND, "unknown_projection"),
        ProjectionError::Parked(ParkedError::NotParked(_)) => (StatusCode::NOT_FOUND, "not_parked"),
        ProjectionError::Parked(ParkedError::HeldBehind { .. }) => {
            (StatusCode::CONFLICT, "held_behind")
        }
        ProjectionError::Parked(ParkedError::FailedAgain { .. }) => {
            (StatusCode::UNPROCESSABLE_ENTITY, "failed_again")
        }
        ProjectionError::ShutDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    };
    Problem::new(status, code, message)
}

fn process_problem(error: ProcessError) -> Problem {
    let message = error.to_string();
    let (status, code) = match &error {
        ProcessError::Unknown(_) => (StatusCode::NOT_FOUND, "unknown_process"),
        ProcessError::Refused(ControlRefusal::NoInstance(_)) => {
            (StatusCode::NOT_FOUND, "no_instance")
        }
        ProcessError::Refused(_) => (StatusCode::CONFLICT, "refused"),
        ProcessError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
        ProcessError::ShutDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    };
    Problem::new(status, code, message)
}

async fn parked(
    State(app): State<App>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    authorized(&app, &headers)?;
    let parked = app
        .runtime
        .parked_events(&name)
        .map_err(projection_problem)?;
    let list: Vec<_> = parked
        .iter()
        .map(|p| json!({"position": p.position, "stream": p.stream, "reason": p.reason, "attempts": p.attempts}))
        .collect();
    Ok(Json(json!(list)).into_response())
}

fn unknown_action(action: &str) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "unknown_action",
        format!("no admin action {action:?}"),
    )
}

/// `retry` or `skip` a parked event.
async fn resolve(
    State(app): State<App>,
    Path((name, position, action)): Path<(String, u64, String)>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    authorized(&app, &headers)?;
    let done = match action.as_str() {
        "retry" => app.runtime.retry_parked(&name, position).await,
        "skip" => app.runtime.skip_parked(&name, position).await,
        other => return Err(unknown_action(other)),
    };
    done.map_err(projection_problem)?;
    Ok(Json(json!({"done": action, "position": position})).into_response())
}

async fn stuck(
    State(app): State<App>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    authorized(&app, &headers)?;
    let stuck = app
        .runtime
        .stuck_instances(&name)
        .map_err(process_problem)?;
    let list: Vec<_> = stuck
        .iter()
        .map(|s| json!({"id": s.id, "error": s.error, "attempts": s.attempts}))
        .collect();
    Ok(Json(json!(list)).into_response())
}

/// `resume` or `cancel` a process instance.
async fn control(
    State(app): State<App>,
    Path((name, id, action)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    authorized(&app, &headers)?;
    let done = match action.as_str() {
        "resume" => app.runtime.resume_instance(&name, &id).await,
        "cancel" => app.runtime.cancel_instance(&name, &id).await,
        other => return Err(unknown_action(other)),
    };
    done.map_err(process_problem)?;
    Ok(Json(json!({"done": action, "id": id})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Backup {
    /// A directory on the service's machine.
    dir: String,
}

async fn backup(
    State(app): State<App>,
    headers: HeaderMap,
    body: Result<Json<Backup>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, Problem> {
    authorized(&app, &headers)?;
    let Json(Backup { dir }) = body?;
    let id = app.runtime.backup(dir).await.map_err(|e| {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "backup_failed",
            e.to_string(),
        )
    })?;
    Ok(Json(json!({"backup_id": id})).into_response())
}
