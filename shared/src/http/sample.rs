//! `POST /sample-task-runner-callback`: the original app's sample receiver, for trying the
//! callback out. It logs what it receives and answers `{"success": true, "message": "ok"}`.

use axum::Json;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::model::CallbackReceipt;

use super::error_response;

/// Accepts a callback body: a JSON object, or (as the original app sent it) a JSON string
/// holding one.
pub async fn receive(body: Bytes) -> Response {
    let mut value: Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(err) => {
            return error_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("callback body is not valid JSON: {err}"),
            );
        }
    };
    if let Value::String(inner) = &value {
        value = serde_json::from_str(inner).unwrap_or(Value::Null);
    }
    let field = |key: &str| value.get(key).cloned().unwrap_or(Value::Null);
    let (task_name, task_id, success) = (field("task_name"), field("task_id"), field("success"));
    if success == Value::Bool(true) {
        tracing::info!(%task_name, %task_id, "sample receiver: task finished successfully");
    } else {
        tracing::error!(%task_name, %task_id, status = %field("status"), "sample receiver: task finished with an error");
    }
    Json(CallbackReceipt {
        success: true,
        message: "ok".into(),
    })
    .into_response()
}
