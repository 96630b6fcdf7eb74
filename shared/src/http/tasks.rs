//! `/task-runner` handlers: submit, list, status, history, logs, cancel; and `/worker-sizes`.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::listing::{ListQuery, RawListQuery};
use crate::model::TaskRunnerResponse;
use crate::service::{ApiError, HistoryEntry, TaskService};

use super::{AppState, Authorized, Caller, error_response};

/// `POST /task-runner`: 202 with the task id and its status URL.
pub async fn submit(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "request body is larger than the {} byte limit; keep requests small (scripts belong in the repository or the tasks directory)",
                    state.service.config.max_body_bytes
                ),
            );
        }
        Err(rejection) => {
            return error_response(
                rejection.status(),
                format!("request body could not be read: {rejection}"),
            );
        }
    };
    let submitted = match &caller {
        Caller::ApiKey(_) => state.service.submit(&body).await,
        Caller::Task(parent) => state.service.submit_child(&body, parent).await,
    };
    match submitted {
        Ok(submitted) => {
            match &caller {
                Caller::ApiKey(key_name) => {
                    tracing::info!(task_id = %submitted.task_id, api_key = %key_name, existing = submitted.existing, "submit")
                }
                Caller::Task(parent) => {
                    tracing::info!(task_id = %submitted.task_id, parent = %parent, existing = submitted.existing, "child submitted")
                }
            }
            let message = if submitted.existing {
                "Task already accepted with this request; returning the existing task".to_owned()
            } else {
                "Started Task successfully".to_owned()
            };
            let status_url = format!(
                "{}/task-runner/{}",
                state.base_url(&headers),
                submitted.task_id
            );
            let response = TaskRunnerResponse {
                success: true,
                message,
                task_id: Some(submitted.task_id),
                status_url: Some(status_url),
            };
            (StatusCode::ACCEPTED, Json(response)).into_response()
        }
        Err(err) => err.into_response(),
    }
}

/// `GET /task-runner?status=&since=&prefix=&limit=&cursor=`: tasks, newest first.
pub async fn list(
    State(state): State<Arc<AppState>>,
    _key: Authorized,
    query: Result<Query<RawListQuery>, QueryRejection>,
) -> Response {
    let raw = match query {
        Ok(Query(raw)) => raw,
        Err(rejection) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                format!(
                    "query string: {}; use status, since, prefix, limit and cursor, each once",
                    rejection.body_text()
                ),
            );
        }
    };
    let listed = match ListQuery::parse(&raw) {
        Ok(query) => state.service.list(&query).await,
        Err(err) => Err(err),
    };
    match listed {
        Ok(list) => Json(list).into_response(),
        Err(err) => err.into_response(),
    }
}

/// `GET /task-runner/{task_id}`.
pub async fn status(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(task_id): Path<String>,
) -> Response {
    if let Err(refused) = caller.may_reach(&task_id) {
        return refused.into_response();
    }
    match state.service.status(&task_id).await {
        Ok(status) => Json(status).into_response(),
        Err(err) => err.into_response(),
    }
}

/// Answer of `GET /task-runner/{task_id}/history`.
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HistoryResponse {
    /// The task id.
    pub task_id: String,
    /// The state history, oldest first.
    pub events: Vec<HistoryEntry>,
}

/// The largest `after` (far past any history: Step Functions stops at 25,000 events).
pub const MAX_AFTER: u64 = u32::MAX as u64;

/// Query of `GET /task-runner/{task_id}/history`.
#[derive(Debug, Default, Deserialize)]
pub struct HistoryQuery {
    /// Only the events after the `after`-th (what a poller has already seen).
    pub after: Option<String>,
}

/// `GET /task-runner/{task_id}/history?after=N`.
pub async fn history(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(task_id): Path<String>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Response {
    if let Err(refused) = caller.may_reach(&task_id) {
        return refused.into_response();
    }
    let after = match query_number(query, "after", |q| q.after, 0, MAX_AFTER) {
        Ok(after) => after.unwrap_or(0),
        Err(err) => return err.into_response(),
    };
    match state.service.history(&task_id, after).await {
        Ok(events) => Json(HistoryResponse { task_id, events }).into_response(),
        Err(err) => err.into_response(),
    }
}

/// One whole-number query parameter from `min` to `max`, or a 400 naming it.
pub(super) fn query_number<Q>(
    query: Result<Query<Q>, QueryRejection>,
    field: &str,
    take: impl FnOnce(Q) -> Option<String>,
    min: u64,
    max: u64,
) -> Result<Option<u64>, ApiError> {
    let refused = |detail: String| {
        ApiError::new(
            400,
            format!("{field}{detail}: must be a whole number from {min} to {max}, given once"),
        )
    };
    let Query(query) =
        query.map_err(|rejection| refused(format!(" ({})", rejection.body_text())))?;
    match take(query) {
        None => Ok(None),
        Some(text) => match text.parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
            _ => Err(refused(format!(" {text:?}"))),
        },
    }
}

/// The most `max_bytes` may ask for.
pub const MAX_LOG_BYTES: u64 = 16 * 1024 * 1024;

/// Query of `GET /task-runner/{task_id}/logs`.
#[derive(Debug, Deserialize)]
pub struct LogsQuery {
    /// How many bytes of the end of the log (default: the callback's tail size).
    pub max_bytes: Option<String>,
}

/// Answer of `GET /task-runner/{task_id}/logs`.
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LogsResponse {
    /// The task id.
    pub task_id: String,
    /// The log tail, secret values masked.
    pub logs: String,
    /// Whether earlier output was left out.
    pub logs_truncated: bool,
}

/// `GET /task-runner/{task_id}/logs?max_bytes=N`.
pub async fn logs(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(task_id): Path<String>,
    query: Result<Query<LogsQuery>, QueryRejection>,
) -> Response {
    if let Err(refused) = caller.may_reach(&task_id) {
        return refused.into_response();
    }
    let max_bytes = match query_number(query, "max_bytes", |q| q.max_bytes, 1, MAX_LOG_BYTES) {
        Ok(Some(n)) => usize::try_from(n).unwrap_or(usize::MAX),
        Ok(None) => state.service.config.log_tail_bytes,
        Err(err) => return err.into_response(),
    };
    log_tail(&state.service, task_id, max_bytes).await
}

/// The last `max_bytes` of a task's log as a `LogsResponse`, or the error.
pub(super) async fn log_tail(service: &TaskService, task_id: String, max_bytes: usize) -> Response {
    match service.logs(&task_id, max_bytes).await {
        Ok(tail) => Json(LogsResponse {
            task_id,
            logs: tail.text,
            logs_truncated: tail.truncated,
        })
        .into_response(),
        Err(err) => err.into_response(),
    }
}

/// `DELETE /task-runner/{task_id}`: cancel.
pub async fn cancel(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(task_id): Path<String>,
) -> Response {
    if let Err(refused) = caller.may_reach(&task_id) {
        return refused.into_response();
    }
    match state.service.cancel(&task_id).await {
        Ok(status) => Json(status).into_response(),
        Err(err) => err.into_response(),
    }
}

/// `GET /worker-sizes`: the size table.
pub async fn worker_sizes(State(state): State<Arc<AppState>>) -> Response {
    Json(&state.service.config.worker_sizes.0).into_response()
}
