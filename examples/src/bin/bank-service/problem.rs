//! The service's error answers: a status, a stable `code` a client can act
//! on, a message; and how the runtime's errors map to them.

use crate::BODY_BYTES_MAX;
use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use eventfold_examples::AccountError;
use eventfold_runtime::CommandError;
use serde_json::json;

/// An error answer: a status, a stable code and a message.
pub(crate) struct Problem {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
    pub(crate) retry_after: Option<u64>,
}

impl Problem {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = Json(json!({"code": self.code, "message": self.message}));
        let mut response = (self.status, body).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body was never read, so the connection cannot
            // carry another request: say so, or a keep-alive client sends its
            // next request on a socket the server is closing.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

impl From<JsonRejection> for Problem {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::BytesRejection(_) => Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the body is over {BODY_BYTES_MAX} bytes"),
            ),
            other => Problem::new(StatusCode::BAD_REQUEST, "bad_json", other.body_text()),
        }
    }
}

fn domain_code(error: &AccountError) -> &'static str {
    match error {
        AccountError::AlreadyOpen => "already_open",
        AccountError::NotOpen => "not_open",
        AccountError::Closed => "closed",
        AccountError::Frozen => "frozen",
        AccountError::ZeroAmount => "zero_amount",
        AccountError::InsufficientFunds { .. } => "insufficient_funds",
        AccountError::BalanceOverflow { .. } => "balance_overflow",
    }
}

impl From<CommandError<AccountError>> for Problem {
    fn from(error: CommandError<AccountError>) -> Self {
        let message = error.to_string();
        match &error {
            CommandError::Rejected(domain) => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                domain_code(domain),
                message,
            ),
            CommandError::WrongExpectedVersion { .. } => {
                Problem::new(StatusCode::CONFLICT, "version_conflict", message)
            }
            CommandError::Overloaded(_) => Problem {
                retry_after: Some(1),
                ..Problem::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message)
            },
            CommandError::Timeout(_) => Problem::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                format!("{message}; the outcome is unknown: retry with the same Idempotency-Key"),
            ),
            CommandError::ShutDown => {
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", message)
            }
            CommandError::InvalidId(_) => {
                Problem::new(StatusCode::BAD_REQUEST, "invalid_account_id", message)
            }
            _ => Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message),
        }
    }
}
