//! The steps of the state machine, as plain async functions over the ports.
//!
//! `submit` starts the worker, `arm_wait` keeps the waiting execution's task token and checks
//! the worker once, `poll_worker` reads its state (the safety net when no end was heard),
//! `finish_and_callback` terminates the worker and POSTs the result, `cleanup` sweeps what
//! was left; `on_worker_event` resumes an execution waiting for a worker that ended. None
//! of them knows whether it runs in a Lambda or inside `taskrunner serve`.

mod cleanup;
mod finish;
mod handler;
mod poll;
mod submit;
mod worker_event;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::callback::CallbackSender;
use crate::chain::ChildIndex;
use crate::config::Config;
use crate::ports::{
    Clock, ConcurrencyGate, PortError, SecretStore, TaskEnd, TaskTokens, WorkerBackend,
    WorkerHandle,
};
use crate::task::TaskSpec;

pub use cleanup::{CleanupReport, cleanup};
pub use finish::{CallbackReport, FinishOutput, callback_body, finish_and_callback};
pub use handler::{Step, StepHandler, step_handlers};
pub use poll::{arm_wait, poll_worker};
pub use submit::submit;
pub use worker_event::{
    EventOutcome, TASK_ID_VARIABLE, WorkerEvent, on_worker_event, resume_if_ended,
};

/// Error names the state machine's `Retry` and `Catch` match on.
pub mod errors {
    /// Worth retrying: a busy store, a network hiccup.
    pub const TRANSIENT: &str = "TaskRunner.Transient";
    /// The worker could not be started (missing secret, bad spec): not retried.
    pub const START_FAILED: &str = "TaskRunner.StartFailed";
    /// The worker's state could not be read, permanently.
    pub const POLL_FAILED: &str = "TaskRunner.PollFailed";
    /// The callback receiver did not accept the result: retried with backoff.
    pub const CALLBACK_FAILED: &str = "TaskRunner.CallbackFailed";
    /// The callback URL is not allowed (SSRF guard): not retried.
    pub const CALLBACK_REFUSED: &str = "TaskRunner.CallbackRefused";
    /// The step's input is not what it expects: not retried.
    pub const BAD_INPUT: &str = "TaskRunner.BadInput";
    /// A user cancelled the task while its execution waited for the worker's end.
    pub const CANCELLED: &str = "TaskRunner.Cancelled";
}

/// A step's failure, as Step Functions sees a Lambda error: a name and a cause.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{error}: {cause}")]
pub struct StepError {
    /// The error name (see [`errors`]).
    pub error: String,
    /// What happened, for people.
    pub cause: String,
}

impl StepError {
    /// An error with this name and cause.
    pub fn new(error: &str, cause: impl Into<String>) -> Self {
        Self {
            error: error.to_owned(),
            cause: cause.into(),
        }
    }

    /// A port failure: transient ones are retried, permanent ones get `permanent_name`.
    pub fn from_port(err: PortError, permanent_name: &str) -> Self {
        match err {
            PortError::Transient(cause) => Self::new(errors::TRANSIENT, cause),
            PortError::Permanent(cause) => Self::new(permanent_name, cause),
        }
    }
}

/// What every step can reach.
pub struct Steps {
    /// Configuration.
    pub config: Arc<Config>,
    /// Secret store (callback tokens, signing secrets).
    pub secrets: Arc<dyn SecretStore>,
    /// Worker backend.
    pub worker: Arc<dyn WorkerBackend>,
    /// Clock.
    pub clock: Arc<dyn Clock>,
    /// Callback delivery.
    pub callbacks: Arc<CallbackSender>,
    /// The line of tasks waiting to run, when the deployment limits running tasks.
    pub gate: Option<Arc<dyn ConcurrencyGate>>,
    /// Where a task's children are found, for its callback.
    pub children: ChildIndex,
    /// Where a waiting execution's task token is kept, and how it is resumed.
    pub tokens: Arc<dyn TaskTokens>,
}

/// The execution input: the validated task.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExecutionInput {
    /// The task.
    pub task: TaskSpec,
}

/// What the state machine keeps about a running worker (`$.run`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// The worker.
    pub worker: WorkerHandle,
    /// When the worker was started; timeouts and the adaptive wait count from here.
    pub submitted_at: DateTime<Utc>,
    /// `queued`, `pending`, `preparing`, `running` or `ended`.
    pub phase: String,
    /// Whether the task is over.
    pub done: bool,
    /// Seconds to wait before the next poll (a state machine polling with a Wait state).
    pub wait_seconds: u64,
    /// Seconds the execution waits for the worker's end before it polls once: the safety
    /// net, never past the task's timeout.
    #[serde(default)]
    pub safety_seconds: u64,
    /// Polls so far.
    pub polls: u32,
    /// How the task ended, once it did.
    pub ended: Option<TaskEnd>,
}

/// Input of `poll_worker`: the execution input plus `$.run`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PollInput {
    /// The task.
    pub task: TaskSpec,
    /// The run so far.
    pub run: RunState,
}

/// Input of `arm_wait` (`poll-worker` called by the waiting task): the state's input and the
/// task token that resumes it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ArmInput {
    /// The state input.
    pub input: PollInput,
    /// `$$.Task.Token`; never logged.
    pub task_token: String,
}

/// An error caught by the state machine (`$.error`), as Step Functions shapes it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CaughtError {
    /// The error name.
    #[serde(rename = "Error")]
    pub error: String,
    /// The cause: plain text, or a Lambda error object as JSON text (empty when the error
    /// came without one, which some Step Functions implementations write as null).
    #[serde(rename = "Cause", default, deserialize_with = "text_or_null")]
    pub cause: String,
}

fn text_or_null<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(deserializer)?.unwrap_or_default())
}

impl CaughtError {
    /// The cause for people: the `errorMessage` of a Lambda error object, or the text itself.
    pub fn message(&self) -> String {
        serde_json::from_str::<serde_json::Value>(&self.cause)
            .ok()
            .and_then(|value| {
                value
                    .get("errorMessage")
                    .and_then(|message| message.as_str())
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| self.cause.clone())
    }
}

/// Input of `finish_and_callback`: the execution input, `$.run` when the worker started,
/// `$.error` when a step failed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FinishInput {
    /// The task.
    pub task: TaskSpec,
    /// The run, when the worker was started.
    #[serde(default)]
    pub run: Option<RunState>,
    /// The error caught on the way, if any.
    #[serde(default)]
    pub error: Option<CaughtError>,
    /// The state machine the execution runs in (`$$.StateMachine.Id`, which the state
    /// machine passes alongside its input), where the task's children are listed.
    #[serde(default)]
    pub state_machine_arn: Option<String>,
}

fn phase_name(phase: &crate::ports::TaskPhase) -> &'static str {
    match phase {
        crate::ports::TaskPhase::Pending => "pending",
        crate::ports::TaskPhase::Preparing => "preparing",
        crate::ports::TaskPhase::Running { .. } => "running",
        crate::ports::TaskPhase::Ended(_) => "ended",
    }
}

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
