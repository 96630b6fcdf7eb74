//! `POST /sample-task-runner-callback`: the original app's sample receiver, for trying the
//! callback out. It logs what it receives and answers `{"success": true, "message": "ok"}`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::model::{CallbackBody, CallbackReceipt, integral_floats_as_integers};

use super::error_response;

/// Accepts a callback body: the JSON object the callback sends, nothing else.
pub async fn receive(body: Result<Bytes, BytesRejection>) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            return error_response(
                rejection.status(),
                format!("callback body could not be read: {}", rejection.body_text()),
            );
        }
    };
    let mut value: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(err) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                format!("callback body is not JSON: {err}"),
            );
        }
    };
    integral_floats_as_integers(&mut value);
    let callback: CallbackBody = match serde_json::from_value(value) {
        Ok(callback) => callback,
        Err(err) => {
            return error_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "callback body is not the callback object (see CallbackBody in /openapi.json): {err}"
                ),
            );
        }
    };
    let CallbackBody {
        task_name,
        task_id,
        status,
        ..
    } = &callback;
    if callback.success {
        tracing::info!(%task_name, %task_id, "sample receiver: task finished successfully");
    } else {
        tracing::error!(%task_name, %task_id, ?status, "sample receiver: task finished with an error");
    }
    Json(CallbackReceipt {
        success: true,
        message: "ok".into(),
    })
    .into_response()
}
