//! The steps behind HTTP, as a Lambda invoke endpoint on loopback: `POST /invoke/{step}`
//! with the step's payload answers the step's result, or 500 with `{"errorType",
//! "errorMessage"}` as a Lambda function reports an error. The ASL cross-check's Node
//! harness calls it from its Task states.
//!
//! `POST /wait/{task_id}` stands in for Step Functions' side of a task token: it answers
//! once [`HarnessTokens`] is resumed (`{"output"}`) or failed (`{"error", "cause"}`) for
//! the task's newest kept token, and never while nothing answers it (the harness's own
//! timeout then ends the wait).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use taskrunner::ports::{PortError, TaskTokens};
use tokio::sync::watch;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};
use taskrunner::clock::ManualClock;
use taskrunner::engine::TaskHandler;

/// The step a `PollWorker` state calls, whose payload carries the timeout just waited out.
const POLL_STEP: &str = "poll-worker";

struct App {
    handlers: HashMap<String, Arc<dyn TaskHandler>>,
    clock: Arc<ManualClock>,
    tokens: Arc<HarnessTokens>,
}

/// Task tokens answered through `POST /wait/{task_id}`: each kept token opens a wait that
/// the first resume or fail answers.
#[derive(Default)]
pub struct HarnessTokens {
    waits: Mutex<HashMap<String, watch::Sender<Option<Value>>>>,
}

impl HarnessTokens {
    fn answer(&self, task_id: &str, answer: Value) -> bool {
        let waits = self.waits.lock().unwrap();
        let Some(wait) = waits.get(task_id) else {
            return false;
        };
        wait.send_if_modified(|current| {
            let open = current.is_none();
            if open {
                *current = Some(answer);
            }
            open
        })
    }

    fn watch(&self, task_id: &str) -> Option<watch::Receiver<Option<Value>>> {
        self.waits
            .lock()
            .unwrap()
            .get(task_id)
            .map(watch::Sender::subscribe)
    }
}

#[async_trait]
impl TaskTokens for HarnessTokens {
    async fn keep(&self, task_id: &str, _token: &str) -> Result<(), PortError> {
        self.waits
            .lock()
            .unwrap()
            .insert(task_id.to_owned(), watch::channel(None).0);
        Ok(())
    }

    async fn resume(&self, task_id: &str, output: &Value) -> Result<bool, PortError> {
        Ok(self.answer(task_id, json!({ "output": output })))
    }

    async fn fail(&self, task_id: &str, error: &str, cause: &str) -> Result<bool, PortError> {
        Ok(self.answer(task_id, json!({ "error": error, "cause": cause })))
    }
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
    /// The other interpreter's safety-net timeouts are real seconds, so before each
    /// PollWorker (which follows such a timeout) the endpoint moves `clock` on by the wait
    /// that preceded it (`$.run.safety_seconds` in the payload): the steps then see the same
    /// times as under the embedded engine, whose timeouts sleep on the same kind of clock.
    pub async fn start(
        handlers: HashMap<String, Arc<dyn TaskHandler>>,
        clock: Arc<ManualClock>,
        tokens: Arc<HarnessTokens>,
    ) -> Self {
        let app = Router::new()
            .route("/invoke/{step}", post(invoke))
            .route("/wait/{task_id}", post(wait))
            .with_state(Arc::new(App {
                handlers,
                clock,
                tokens,
            }));
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
        && let Some(seconds) = payload["run"]["safety_seconds"].as_u64()
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

async fn wait(
    State(app): State<Arc<App>>,
    Path(task_id): Path<String>,
) -> (StatusCode, Json<Value>) {
    let Some(mut answer) = app.tokens.watch(&task_id) else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "InvalidToken", "cause": "no token kept for this task"})),
        );
    };
    let answered = answer
        .wait_for(Option::is_some)
        .await
        .map(|answer| answer.clone());
    match answered {
        Ok(answer) => (StatusCode::OK, Json(answer.unwrap_or_default())),
        // The next wait replaced this one: nothing will answer it.
        Err(_) => std::future::pending().await,
    }
}
