//! The steps behind HTTP, as a Lambda invoke endpoint on loopback: `POST /invoke/{step}`
//! with the step's payload answers the step's result, or 500 with `{"errorType",
//! "errorMessage"}` as a Lambda function reports an error. The ASL cross-check's Node
//! harness calls it from its Task states.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};
use taskrunner::clock::ManualClock;
use taskrunner::engine::TaskHandler;

/// The step a `PollWorker` state calls, whose payload carries the Wait just skipped.
const POLL_STEP: &str = "poll-worker";

struct App {
    handlers: HashMap<String, Arc<dyn TaskHandler>>,
    clock: Arc<ManualClock>,
}

/// A running step endpoint.
pub struct StepServer {
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    task: tokio::task::JoinHandle<()>,
}

impl StepServer {
    /// Serves `handlers` (by step name, as `taskrunner::embedded::step_handlers` keys them).
    ///
    /// The other interpreter's Wait states take no time, so before each poll the endpoint
    /// moves `clock` on by the wait that preceded it (`$.run.wait_seconds` in the payload):
    /// the steps then see the same times as under the embedded engine, whose Waits sleep on
    /// the same kind of clock.
    pub async fn start(
        handlers: HashMap<String, Arc<dyn TaskHandler>>,
        clock: Arc<ManualClock>,
    ) -> Self {
        let app = Router::new()
            .route("/invoke/{step}", post(invoke))
            .with_state(Arc::new(App { handlers, clock }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { endpoint, task }
    }
}

impl Drop for StepServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn invoke(
    State(app): State<Arc<App>>,
    Path(step): Path<String>,
    Json(payload): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let Some(handler) = app.handlers.get(&step) else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({
                "errorType": "Lambda.ResourceNotFoundException",
                "errorMessage": format!("no step named {step:?}"),
            })),
        );
    };
    if step == POLL_STEP
        && let Some(seconds) = payload["run"]["wait_seconds"].as_u64()
    {
        app.clock.advance(Duration::from_secs(seconds));
    }
    match handler.invoke(payload).await {
        Ok(result) => (StatusCode::OK, Json(result)),
        Err(failure) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"errorType": failure.error, "errorMessage": failure.cause})),
        ),
    }
}
