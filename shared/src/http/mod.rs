//! The HTTP API: one axum `Router`, served by `taskrunner serve` and by the `api` Lambda.
//!
//! Routes and bodies are the public contract of DESIGN.md. Every error is JSON
//! `{"success": false, "message": "..."}` with a message that names the problem and the fix.

mod openapi;
pub use openapi::TASK_ID_PATTERN;
mod sample;
mod tasks;
pub mod ui;
pub mod webhooks;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::auth::task_token::{TaskTokens, TokenError};
use crate::auth::{ApiKeys, AuthError};
use crate::model::TaskRunnerResponse;
use crate::ports::ExecutionStatus;
use crate::service::{ApiError, TaskService};
use crate::status::task_status;
use crate::task::TaskId;

/// What the handlers share.
pub struct AppState {
    /// The task operations.
    pub service: TaskService,
    /// API key checks.
    pub api_keys: ApiKeys,
    /// Base URL for `status_url` (no trailing slash); when `None`, taken from the request's
    /// `Host` and `X-Forwarded-Proto` headers (API Gateway sets both).
    pub public_url: Option<String>,
}

impl AppState {
    /// The base URL `status_url`s start with.
    pub(crate) fn base_url(&self, headers: &HeaderMap) -> String {
        if let Some(url) = &self.public_url {
            return url.trim_end_matches('/').to_owned();
        }
        let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
        let host = header("x-forwarded-host")
            .or(header("host"))
            .unwrap_or("localhost");
        let scheme = header("x-forwarded-proto").unwrap_or("https");
        format!("{scheme}://{host}")
    }
}

/// Builds the router.
pub fn router(state: Arc<AppState>) -> Router {
    let body_limit = state.service.config.max_body_bytes;
    // Deliveries get their own, larger limit (set on the route, it wins over the default).
    let webhook_limit = DefaultBodyLimit::max(state.service.config.webhooks.max_body_bytes);
    Router::new()
        .route(
            "/webhooks/github",
            post(webhooks::github).layer(webhook_limit),
        )
        .route(
            "/webhooks/gitlab",
            post(webhooks::gitlab).layer(webhook_limit),
        )
        .route(
            "/webhooks/gitea",
            post(webhooks::gitea).layer(webhook_limit),
        )
        .route(
            "/webhooks/bitbucket",
            post(webhooks::bitbucket).layer(webhook_limit),
        )
        .route("/task-runner", post(tasks::submit).get(tasks::list))
        .route("/task-runner/", post(tasks::submit).get(tasks::list))
        .route(
            "/task-runner/{task_id}",
            get(tasks::status).delete(tasks::cancel),
        )
        .route("/task-runner/{task_id}/logs", get(tasks::logs))
        .route("/task-runner/{task_id}/history", get(tasks::history))
        .route("/sample-task-runner-callback", post(sample::receive))
        .route("/healthz", get(health))
        .route("/worker-sizes", get(tasks::worker_sizes))
        .route("/openapi.json", get(openapi::document))
        .merge(ui::routes(Arc::clone(&state)))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::map_response(plain_errors_as_json))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

async fn not_found() -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "no such route; see GET /openapi.json for the API".into(),
    )
}

async fn method_not_allowed(method: axum::http::Method) -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("this route does not take {method}; see GET /openapi.json for its methods"),
    )
}

/// The errors axum's extractors answer by themselves (a path that is not UTF-8, say) come as
/// plain text; they become the JSON error body like every other error, headers kept.
async fn plain_errors_as_json(response: Response) -> Response {
    let plain = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_none_or(|value| value.as_bytes().starts_with(b"text/plain"));
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || !plain {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
        .unwrap_or_default();
    let message = if text.is_empty() {
        format!(
            "{}; see GET /openapi.json for the API",
            status.canonical_reason().unwrap_or("refused")
        )
    } else {
        text
    };
    let json = error_response(status, message);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, json.into_body())
}

/// A JSON error response.
pub(crate) fn error_response(status: StatusCode, message: String) -> Response {
    (status, Json(TaskRunnerResponse::refused(message))).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        error_response(status, self.message)
    }
}

/// An extractor that lets a request in only with a valid API key; holds the key's name.
/// A task token is refused with 403: its scope does not reach these routes.
pub(crate) struct Authorized;

impl FromRequestParts<Arc<AppState>> for Authorized {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        match Caller::from_request_parts(parts, state).await? {
            Caller::ApiKey(_) => Ok(Authorized),
            Caller::Task(task_id) => Err(error_response(
                StatusCode::FORBIDDEN,
                format!(
                    "a task token (task {task_id}) may only submit children of its task (POST /task-runner) and read or cancel its own descendants (task ids starting \"{task_id}.\"); this request needs an API key"
                ),
            )),
        }
    }
}

/// Who is calling: a holder of an API key, or a running task with its task token.
pub(crate) enum Caller {
    /// An API key, by name: everything.
    ApiKey(String),
    /// A running task: its own children and descendants only.
    Task(TaskId),
}

impl Caller {
    /// Lets the caller reach the task `task_id`, or answers 403 naming the token's scope.
    pub(crate) fn may_reach(&self, task_id: &str) -> Result<(), ApiError> {
        match self {
            Caller::ApiKey(_) => Ok(()),
            Caller::Task(own) if own.is_ancestor_of(task_id) => Ok(()),
            Caller::Task(own) => Err(ApiError::new(
                403,
                format!(
                    "the task token of task {own} may read and cancel only its own descendants (task ids starting \"{own}.\"); task {task_id:?} is outside that scope"
                ),
            )),
        }
    }
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok());
        let presented = header
            .and_then(|header| {
                header
                    .strip_prefix("Bearer ")
                    .or_else(|| header.strip_prefix("bearer "))
            })
            .map(str::trim);
        match presented {
            Some(token) if TaskTokens::is_task_token(token) => {
                task_caller(state, token).await.map(Caller::Task)
            }
            _ => authorize(state, &parts.headers).await.map(Caller::ApiKey),
        }
    }
}

/// The task a task token belongs to, while that task runs; the error is a ready 401.
async fn task_caller(state: &AppState, token: &str) -> Result<TaskId, Response> {
    let claims = match state
        .api_keys
        .task_tokens()
        .verify(token, chrono::Utc::now())
        .await
    {
        Ok(claims) => claims,
        Err(TokenError::Store(err)) => return Err(ApiError::from(err).into_response()),
        Err(err) => return Err(unauthorized(err.to_string())),
    };
    let execution = state
        .service
        .orchestrator
        .describe(claims.task_id.as_str())
        .await
        .map_err(|err| ApiError::from(err).into_response())?;
    match execution {
        Some(execution)
            if execution.status == ExecutionStatus::Running && !task_status(&execution).done =>
        {
            Ok(claims.task_id)
        }
        _ => Err(unauthorized(format!(
            "task ended: task {} is over, so its task token is no longer valid",
            claims.task_id
        ))),
    }
}

/// A 401 that asks for a bearer token.
fn unauthorized(message: String) -> Response {
    let mut response = error_response(StatusCode::UNAUTHORIZED, message);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    response
}

/// Checks the request's API key; the error is a ready 401 response.
pub(crate) async fn authorize(state: &AppState, headers: &HeaderMap) -> Result<String, Response> {
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    match state.api_keys.check(header).await {
        Ok(name) => Ok(name),
        Err(AuthError::Denied(message)) => {
            let message = match state.api_keys.any().await {
                Ok(false) => "no API key is configured on this server; set TASKRUNNER_API_KEY for `taskrunner serve`, or create one with `taskrunner api-key create --name NAME`".to_owned(),
                _ => message,
            };
            Err(unauthorized(message))
        }
        Err(AuthError::Store(err)) => Err(ApiError::from(err).into_response()),
    }
}

#[cfg(test)]
mod list_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod webhook_tests;
