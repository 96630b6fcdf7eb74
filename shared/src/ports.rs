//! The ports: what the steps need from the outside world, whatever runs it.
//!
//! Each trait has a local adapter (`adapters::local`) and an AWS one. Steps take these as
//! `Arc<dyn ...>` and never know which they got.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::secret::Secret;
use crate::task::{TaskId, TaskSpec};

/// A failure of an adapter, with a message that says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// Worth trying again later (network, throttling, a busy database).
    #[error("{0}")]
    Transient(String),
    /// Will fail the same way again until someone changes something.
    #[error("{0}")]
    Permanent(String),
}

impl PortError {
    /// Whether retrying may help.
    pub fn is_transient(&self) -> bool {
        matches!(self, PortError::Transient(_))
    }
}

/// A secret-store entry as listed: never the value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretEntry {
    /// The name.
    pub name: String,
    /// When it was first stored.
    pub created_at: DateTime<Utc>,
    /// When its value last changed.
    pub updated_at: DateTime<Utc>,
}

/// Where secret values live: git tokens, task secrets, callback tokens, API key hashes.
#[async_trait]
pub trait SecretStore: Send + Sync {
    /// The value under `name`, or `None` when there is none.
    async fn get(&self, name: &str) -> Result<Option<Secret>, PortError>;
    /// Stores (or replaces) the value under `name`.
    async fn put(&self, name: &str, value: &Secret) -> Result<(), PortError>;
    /// Stores `value` under `name` only when nothing is stored there; `false` when a value
    /// already was (it is kept). Stores shared by several processes make this atomic, so of
    /// two processes creating the same entry at once exactly one wins; this default, a read
    /// then a write, is enough for a store that one process owns.
    async fn create(&self, name: &str, value: &Secret) -> Result<bool, PortError> {
        if self.get(name).await?.is_some() {
            return Ok(false);
        }
        self.put(name, value).await?;
        Ok(true)
    }
    /// Deletes `name`; `false` when it did not exist.
    async fn delete(&self, name: &str) -> Result<bool, PortError>;
    /// Entries whose name starts with `prefix`, sorted by name.
    async fn list(&self, prefix: &str) -> Result<Vec<SecretEntry>, PortError>;
}

/// Identifies a started worker (a local process, a CodeBuild build).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerHandle {
    /// Which backend started it (`local`, `codebuild`).
    pub backend: String,
    /// The backend's id for it.
    pub id: String,
}

/// How a task ended, as the callback reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The task exited 0.
    Succeeded,
    /// The task exited non-zero.
    Failed,
    /// The task ran past its timeout and was stopped.
    TimedOut,
    /// Someone cancelled the task.
    Cancelled,
    /// The task could not run: start, clone, secret or callback problem.
    Error,
}

impl Outcome {
    /// The callback's `success` field.
    pub fn is_success(self) -> bool {
        self == Outcome::Succeeded
    }

    /// The status word used in callbacks and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::TimedOut => "timed_out",
            Outcome::Cancelled => "cancelled",
            Outcome::Error => "error",
        }
    }
}

/// The end of a task, as its worker saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskEnd {
    /// How it ended.
    pub outcome: Outcome,
    /// The task's exit code, when it ran and exited.
    pub exit_code: Option<i32>,
    /// Why, in words, when it did not simply exit (clone failure, signal, timeout).
    pub reason: Option<String>,
    /// When the task started running (after clone and startup script), if it did.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: DateTime<Utc>,
}

/// Where a task is, as its worker sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum TaskPhase {
    /// Accepted by the backend, not yet running anything.
    Pending,
    /// Cloning repositories or running the startup script.
    Preparing,
    /// The task file is running.
    Running {
        /// When it started.
        started_at: DateTime<Utc>,
    },
    /// The task is over.
    Ended(TaskEnd),
}

/// A worker's state: the task's phase and whether the worker itself still exists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// The task's phase.
    pub task: TaskPhase,
    /// Whether the worker (process group, build) is still alive. A kept worker
    /// (`terminate_on_completion: false`) is alive after its task ended.
    pub worker_alive: bool,
}

/// The last bytes of a task's log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogTail {
    /// The text (secret values already masked).
    pub text: String,
    /// Whether earlier output was left out.
    pub truncated: bool,
}

/// Why a worker is being terminated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TerminateReason {
    /// The task ended and `terminate_on_completion` is true.
    Completed,
    /// A user cancelled the task.
    Cancelled,
    /// The task ran past its timeout.
    TimedOut,
    /// The cleanup sweep found it orphaned or past its keep time.
    Cleanup,
}

/// A worker the backend knows of, for the cleanup sweep.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerSummary {
    /// Its handle.
    pub handle: WorkerHandle,
    /// The task it runs.
    pub task_id: String,
    /// Whether it still holds resources (processes, a workspace, a build).
    pub holds_resources: bool,
    /// Until when a kept worker may stay, if it is kept.
    pub keep_until: Option<DateTime<Utc>>,
}

/// Runs tasks on workers: local processes, or CodeBuild builds.
#[async_trait]
pub trait WorkerBackend: Send + Sync {
    /// Starts a worker for `spec`. Idempotent per task id: starting again returns the
    /// worker already started.
    async fn start(&self, spec: &TaskSpec) -> Result<WorkerHandle, PortError>;
    /// The worker's current state.
    async fn status(&self, handle: &WorkerHandle) -> Result<WorkerStatus, PortError>;
    /// The last `max_bytes` of the task's log, secret values masked.
    async fn log_tail(&self, handle: &WorkerHandle, max_bytes: usize)
    -> Result<LogTail, PortError>;
    /// Stops the worker and frees what it holds. Idempotent.
    async fn terminate(
        &self,
        handle: &WorkerHandle,
        reason: TerminateReason,
    ) -> Result<(), PortError>;
    /// The worker a task id would have, whether or not it was started.
    fn handle_for(&self, task_id: &TaskId) -> WorkerHandle;
    /// Every worker that still holds resources, for the cleanup sweep.
    async fn list(&self) -> Result<Vec<WorkerSummary>, PortError>;
    /// Records that the receiver accepted the task's callback, so that a finish step run
    /// again (after a crash or a lost write between the delivery and the step's own write)
    /// does not deliver it a second time. Backends without a place for it keep nothing.
    async fn record_delivery(
        &self,
        _handle: &WorkerHandle,
        _delivery: &DeliveryRecord,
    ) -> Result<(), PortError> {
        Ok(())
    }
    /// The delivery recorded by [`WorkerBackend::record_delivery`], if any.
    async fn recorded_delivery(
        &self,
        _handle: &WorkerHandle,
    ) -> Result<Option<DeliveryRecord>, PortError> {
        Ok(None)
    }
}

/// A callback the receiver accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    /// The `webhook-id` it was sent with.
    pub webhook_id: String,
    /// The receiver's 2xx status.
    pub status_code: u16,
    /// Whether it carried Standard Webhooks signatures.
    pub signed: bool,
}

/// Result of starting an execution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartOutcome {
    /// A new execution was started.
    Started,
    /// An execution with this name and the same input exists: nothing new was started.
    AlreadyExists,
    /// An execution with this name exists with a different input.
    Conflict,
}

/// Execution status, as Step Functions names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ExecutionStatus {
    /// Still going.
    Running,
    /// Reached a Succeed state.
    Succeeded,
    /// Reached a Fail state or an uncaught error.
    Failed,
    /// Stopped from outside.
    Aborted,
    /// Ran past the state machine's own timeout.
    TimedOut,
}

/// What an orchestrator knows of one execution.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExecutionView {
    /// Execution name (the task id).
    pub name: String,
    /// Status.
    pub status: ExecutionStatus,
    /// The execution input.
    pub input: Value,
    /// The execution output, when it succeeded.
    pub output: Option<Value>,
    /// The error name, when it failed.
    pub error: Option<String>,
    /// The error cause, when it failed.
    pub cause: Option<String>,
    /// The state it is in (or ended in).
    pub current_state: Option<String>,
    /// The input of that state: the latest data the execution holds.
    pub state_input: Option<Value>,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it ended.
    pub stopped_at: Option<DateTime<Utc>>,
    /// State transitions so far.
    pub transitions: u64,
    /// History events so far.
    pub history_events: u64,
}

/// One event of an execution's history, as Step Functions lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExecutionEvent {
    /// When it happened.
    pub timestamp: DateTime<Utc>,
    /// Such as `TaskStateEntered` or `TaskFailed`.
    pub event_type: String,
    /// The state it concerns: named by `*StateEntered`/`*StateExited` events; other events
    /// concern the state entered last.
    pub state: Option<String>,
    /// The error name, for failures.
    pub error: Option<String>,
    /// The error cause, for failures.
    pub cause: Option<String>,
    /// A Task's result, for `TaskSucceeded`.
    pub output: Option<Value>,
}

/// Which executions a page holds: newest first, from where the previous page stopped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PageQuery {
    /// Only executions with this status.
    pub status: Option<ExecutionStatus>,
    /// Only executions started at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only executions whose name starts with this.
    pub prefix: Option<String>,
    /// At most this many executions.
    pub limit: usize,
    /// The previous page's `next_token`; `None` for the first page.
    pub token: Option<String>,
}

/// One page of executions.
#[derive(Clone, Debug, PartialEq)]
pub struct ExecutionPage {
    /// The executions, newest first.
    pub executions: Vec<ExecutionView>,
    /// Where the next page starts; `None` when there is no more.
    pub next_token: Option<String>,
}

/// Runs the state machine: the embedded engine, or AWS Step Functions.
#[async_trait]
pub trait Orchestrator: Send + Sync {
    /// Starts an execution named `name`. Same name and same input again: `AlreadyExists`.
    async fn start(&self, name: &str, input: &Value) -> Result<StartOutcome, PortError>;
    /// The execution named `name`, if any.
    async fn describe(&self, name: &str) -> Result<Option<ExecutionView>, PortError>;
    /// The history of the execution `name`, oldest first; empty when there is none.
    async fn history(&self, name: &str) -> Result<Vec<ExecutionEvent>, PortError>;
    /// The history after its first `after` events, oldest first (what a poller has not seen).
    async fn history_after(
        &self,
        name: &str,
        after: usize,
    ) -> Result<Vec<ExecutionEvent>, PortError> {
        let mut events = self.history(name).await?;
        events.drain(..after.min(events.len()));
        Ok(events)
    }
    /// Executions, newest first, at most `limit`, optionally only those with `status`.
    async fn list(
        &self,
        status: Option<ExecutionStatus>,
        limit: usize,
    ) -> Result<Vec<ExecutionView>, PortError>;
    /// One page of executions, newest first. Executions started after the first page was
    /// taken never show up on later pages, so paging neither repeats nor skips one.
    async fn page(&self, query: &PageQuery) -> Result<ExecutionPage, PortError>;
    /// Stops a running execution.
    async fn stop(&self, name: &str, error: &str, cause: &str) -> Result<(), PortError>;
    /// Deletes finished executions that stopped before `before`; returns how many.
    async fn purge_finished(&self, before: DateTime<Utc>) -> Result<u64, PortError>;
}

/// Time, so that tests can run a 36-hour poll loop in milliseconds.
#[async_trait]
pub trait Clock: Send + Sync {
    /// Now.
    fn now(&self) -> DateTime<Utc>;
    /// Waits `duration` (a manual clock advances instead).
    async fn sleep(&self, duration: Duration);
    /// Completes once the clock shows `end`, without moving it (a deadline nobody reached
    /// must not push a manual clock forward). This default watches the clock every 50 ms;
    /// a real clock sleeps once.
    async fn reached(&self, end: DateTime<Utc>) {
        loop {
            let left = (end - self.now()).to_std().unwrap_or(Duration::ZERO);
            if left.is_zero() {
                return;
            }
            tokio::time::sleep(left.min(Duration::from_millis(50))).await;
        }
    }
}

/// Whether a task may start now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Its turn has come and there is room: start it.
    Admitted,
    /// It waits in line behind `ahead` others.
    Queued {
        /// Tasks in line before it.
        ahead: usize,
    },
}

/// The line of tasks waiting to run: a deployment-wide limit of running tasks and a limit
/// per `concurrency_key`, first come first served.
#[async_trait]
pub trait ConcurrencyGate: Send + Sync {
    /// Puts the task in line (once; asking again keeps its place) and admits it when its turn
    /// has come and the limits leave room.
    async fn admit(&self, task_id: &str, key: Option<&str>) -> Result<Admission, PortError>;
    /// Takes the task out (running or waiting); idempotent.
    async fn release(&self, task_id: &str) -> Result<(), PortError>;
    /// The running tasks holding `key`.
    async fn running_with_key(&self, key: &str) -> Result<Vec<String>, PortError>;
    /// Every task in line or running, for the cleanup sweep.
    async fn holders(&self) -> Result<Vec<String>, PortError>;
}

/// How a waiting execution is resumed: the `.waitForTaskToken` task `WaitForWorker` hands its
/// token to `poll-worker`, which keeps it here by task id; the worker's end (a local process
/// exit, a CodeBuild state-change event) finds it again and resumes the execution with the
/// task's run state. Tokens are not secrets but are never logged.
#[async_trait]
pub trait TaskTokens: Send + Sync {
    /// Keeps `token` as the one that resumes task `task_id`, replacing an older one (a
    /// re-entered wait gets a new token).
    async fn keep(&self, task_id: &str, token: &str) -> Result<(), PortError>;
    /// Resumes the waiting execution of `task_id` with `output` (`SendTaskSuccess`). False
    /// when no wait is open: no token kept, or the token already used or timed out.
    async fn resume(&self, task_id: &str, output: &Value) -> Result<bool, PortError>;
    /// Ends the waiting execution's wait with an error (`SendTaskFailure`), for cancel. False
    /// when no wait is open.
    async fn fail(&self, task_id: &str, error: &str, cause: &str) -> Result<bool, PortError>;
}
