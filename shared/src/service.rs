//! The operations behind the API: submit, status, history, logs, cancel. The HTTP router and the
//! CLI's `run` both call these, so the rules live in one place.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::Config;
use crate::ports::{
    ExecutionStatus, ExecutionView, LogTail, Orchestrator, PortError, SecretStore, StartOutcome,
    TaskPhase, TaskTokens, TerminateReason, WorkerBackend, WorkerHandle,
};
use crate::status::{TaskStatus, task_status};
use crate::task::{TaskId, TaskSpec, callback_token_secret_name};
use crate::validate::{Accepted, Rules, parse_request};

/// An operation's failure: an HTTP status and a message that says what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl ApiError {
    /// An error with this status and message.
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// A path's task id, or 400 naming the field: an id no task can have.
    fn task_id(raw: &str) -> Result<TaskId, Self> {
        TaskId::parse(raw).map_err(|why| Self::new(400, format!("task_id: {why}")))
    }

    fn not_found(task_id: &str) -> Self {
        Self::new(
            404,
            format!("no task with task_id {task_id:?}; submit it with POST /task-runner"),
        )
    }
}

impl From<PortError> for ApiError {
    fn from(err: PortError) -> Self {
        match err {
            PortError::Transient(message) => Self::new(503, format!("{message}; try again")),
            PortError::Permanent(message) => Self::new(500, message),
        }
    }
}

/// Checks a callback URL at submit time; `Err` says why it is refused.
pub type CallbackUrlCheck = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Result of a submit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submitted {
    /// The task id.
    pub task_id: String,
    /// True when the same request had been accepted before: nothing new was started.
    pub existing: bool,
}

/// One event of a task's state history, as `GET /task-runner/{task_id}/history` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HistoryEntry {
    /// Its position in the history, from 1: ask for `?after=` this to get only newer events.
    pub id: u64,
    /// When it happened.
    pub timestamp: DateTime<Utc>,
    /// Such as `TaskStateEntered`, `TaskFailed` or `ExecutionSucceeded`.
    pub event_type: String,
    /// The state it concerns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// The error name, for failures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The error's cause, for failures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
}

/// The task service.
#[derive(Clone)]
pub struct TaskService {
    /// Configuration.
    pub config: Arc<Config>,
    /// Secret store.
    pub secrets: Arc<dyn SecretStore>,
    /// Worker backend.
    pub worker: Arc<dyn WorkerBackend>,
    /// Orchestrator.
    pub orchestrator: Arc<dyn Orchestrator>,
    /// Whether local paths and `file://` repositories are accepted (embedded mode).
    pub allow_local_repositories: bool,
    /// Whether requests may carry a `concurrency_key` (the deployment has a task line).
    pub concurrency_keys: bool,
    /// Directory relative repository paths are resolved against.
    pub base_dir: PathBuf,
    /// Checks a callback URL at submit time.
    pub check_callback_url: CallbackUrlCheck,
    /// Where waiting executions' task tokens are kept: a cancel ends the wait at once.
    pub tokens: Arc<dyn TaskTokens>,
}

impl TaskService {
    /// The task's worker: the one the execution recorded (`$.run.worker`), else the one the
    /// backend would give this task id (a worker not started yet).
    fn worker_of(&self, id: &TaskId, execution: &ExecutionView) -> WorkerHandle {
        execution
            .state_input
            .as_ref()
            .and_then(|input| input.get("run"))
            .and_then(|run| run.get("worker"))
            .and_then(|worker| serde_json::from_value(worker.clone()).ok())
            .unwrap_or_else(|| self.worker.handle_for(id))
    }

    /// Terminates the task's worker as cancelled and ends its execution's wait for the
    /// worker with `TaskRunner.Cancelled`, so FinishAndCallback sends the `cancelled`
    /// callback now (when no wait is open, the execution sees the worker's end itself).
    async fn cancel_one(&self, id: &TaskId, execution: &ExecutionView) -> Result<(), ApiError> {
        self.worker
            .terminate(&self.worker_of(id, execution), TerminateReason::Cancelled)
            .await?;
        self.tokens
            .fail(
                id.as_str(),
                crate::steps::errors::CANCELLED,
                "the task was cancelled (DELETE /task-runner/{task_id})",
            )
            .await?;
        Ok(())
    }

    fn parse(&self, body: &[u8]) -> Result<Accepted, ApiError> {
        let rules = Rules {
            config: &self.config,
            allow_local_repositories: self.allow_local_repositories,
            base_dir: &self.base_dir,
            check_callback_url: &*self.check_callback_url,
            concurrency_keys: self.concurrency_keys,
        };
        parse_request(body, &rules).map_err(|err| ApiError::new(err.status, err.message))
    }

    /// Validates and starts a task. The same request again returns the existing task;
    /// another request under the same task id is a 409.
    pub async fn submit(&self, body: &[u8]) -> Result<Submitted, ApiError> {
        let accepted = self.parse(body)?;
        self.start(accepted).await
    }

    /// Validates and starts a child of the running task `parent` (a task token's submit).
    /// The child's id is `PARENT.<its task_id>`; it may name only secrets the parent's
    /// request named; the chain's depth and the parent's number of children are limited.
    pub async fn submit_child(&self, body: &[u8], parent: &TaskId) -> Result<Submitted, ApiError> {
        let mut accepted = self.parse(body)?;
        let limits = &self.config.chain;
        if parent.depth() + 1 > limits.max_depth {
            return Err(ApiError::new(
                429,
                format!(
                    "chain depth limit reached: task {parent} is {} level(s) below the task submitted with an API key, and children may nest at most {} deep; raise chain.max_depth (TASKRUNNER_CHAIN_MAX_DEPTH) to allow deeper chains",
                    parent.depth(),
                    limits.max_depth
                ),
            ));
        }
        let execution = self
            .orchestrator
            .describe(parent.as_str())
            .await?
            .ok_or_else(|| ApiError::not_found(parent.as_str()))?;
        let parent_spec: TaskSpec = execution
            .input
            .get("task")
            .cloned()
            .and_then(|task| serde_json::from_value(task).ok())
            .ok_or_else(|| {
                ApiError::new(
                    500,
                    format!("task {parent}: its stored request is unreadable"),
                )
            })?;
        let allowed: BTreeSet<&str> = secret_names(&parent_spec).collect();
        if let Some(widened) = secret_names(&accepted.spec).find(|name| !allowed.contains(name)) {
            return Err(ApiError::new(
                403,
                format!(
                    "secret {widened:?}: the parent task {parent} did not name it in its request, and a child may use only secrets its parent was given; add it to the parent's worker_config (personal_secrets, shared_secrets or git_configs)"
                ),
            ));
        }
        let child_id = parent
            .child(&accepted.spec.task_id)
            .map_err(|why| ApiError::new(422, format!("task_id: {why}")))?;
        if self
            .orchestrator
            .describe(child_id.as_str())
            .await?
            .is_none()
        {
            let count = crate::chain::children(self.orchestrator.as_ref(), &execution)
                .await?
                .len();
            if count >= limits.max_children {
                return Err(ApiError::new(
                    429,
                    format!(
                        "children limit reached: task {parent} has started {count} children, the most one task may start; raise chain.max_children (TASKRUNNER_CHAIN_MAX_CHILDREN) to allow more"
                    ),
                ));
            }
        }
        accepted.spec.task_id = child_id;
        accepted.spec.parent_task_id = Some(parent.clone());
        self.start(accepted).await
    }

    async fn start(&self, accepted: Accepted) -> Result<Submitted, ApiError> {
        let task_id = accepted.spec.task_id.to_string();
        let input = json!({ "task": accepted.spec });
        let conflict = || {
            ApiError::new(
                409,
                format!(
                    "task_id {task_id:?} is already used by a different request; send the same body to get the existing task, or use a new task_id"
                ),
            )
        };
        if let Some(token) = &accepted.callback_token {
            // The token is kept before the task exists: a repeated or conflicting request
            // must not replace the token of the task that has this id.
            if let Some(existing) = self.orchestrator.describe(&task_id).await? {
                return if existing.input == input {
                    Ok(Submitted {
                        task_id,
                        existing: true,
                    })
                } else {
                    Err(conflict())
                };
            }
            self.secrets
                .put(&callback_token_secret_name(&accepted.spec.task_id), token)
                .await?;
        }
        // Otherwise the insert itself tells a new task from a repeated or conflicting one.
        match self.orchestrator.start(&task_id, &input).await? {
            StartOutcome::Started => {
                tracing::info!(task_id = %task_id, "task accepted");
                Ok(Submitted {
                    task_id,
                    existing: false,
                })
            }
            StartOutcome::AlreadyExists => Ok(Submitted {
                task_id,
                existing: true,
            }),
            StartOutcome::Conflict => Err(conflict()),
        }
    }

    /// The task's status. While the execution watches a worker that has not ended (its
    /// run state says not done, and no error was caught), the worker is asked directly, so
    /// the status is live rather than as of the last check.
    pub async fn status(&self, task_id: &str) -> Result<TaskStatus, ApiError> {
        let id = ApiError::task_id(task_id)?;
        let execution = self
            .orchestrator
            .describe(task_id)
            .await?
            .ok_or_else(|| ApiError::not_found(task_id))?;
        let mut status = task_status(&execution);
        status.children = crate::chain::children(self.orchestrator.as_ref(), &execution).await?;
        let state_input = execution.state_input.as_ref();
        let watching = state_input
            .and_then(|input| input.get("run"))
            .and_then(|run| run.get("done"))
            .is_some_and(|done| done == false)
            && state_input.is_some_and(|input| input.get("error").is_none());
        if execution.status == ExecutionStatus::Running && watching {
            if let Ok(live) = self.worker.status(&self.worker_of(&id, &execution)).await {
                status.status = match live.task {
                    TaskPhase::Pending if status.status == "queued" => "queued",
                    TaskPhase::Pending => "starting",
                    TaskPhase::Preparing => "preparing",
                    TaskPhase::Running { started_at } => {
                        status.started_at = Some(started_at);
                        "running"
                    }
                    TaskPhase::Ended(_) => "finishing",
                }
                .into();
            }
        }
        Ok(status)
    }

    /// The task's state history after its `after`-th event, oldest first: every state
    /// entered and left, and every failure with its error and cause. Task results are left
    /// out.
    pub async fn history(&self, task_id: &str, after: u64) -> Result<Vec<HistoryEntry>, ApiError> {
        ApiError::task_id(task_id)?;
        self.orchestrator
            .describe(task_id)
            .await?
            .ok_or_else(|| ApiError::not_found(task_id))?;
        let skipped = usize::try_from(after).unwrap_or(usize::MAX);
        let events = self.orchestrator.history_after(task_id, skipped).await?;
        Ok(events
            .into_iter()
            .zip(after.saturating_add(1)..)
            .map(|(event, id)| HistoryEntry {
                id,
                timestamp: event.timestamp,
                event_type: event.event_type,
                state: event.state,
                error: event.error,
                cause: event.cause,
            })
            .collect())
    }

    /// The last `max_bytes` of the task's log.
    pub async fn logs(&self, task_id: &str, max_bytes: usize) -> Result<LogTail, ApiError> {
        let id = ApiError::task_id(task_id)?;
        let execution = self
            .orchestrator
            .describe(task_id)
            .await?
            .ok_or_else(|| ApiError::not_found(task_id))?;
        Ok(self
            .worker
            .log_tail(&self.worker_of(&id, &execution), max_bytes)
            .await?)
    }

    /// Cancels a running task: its worker is terminated and its callback says `cancelled`.
    pub async fn cancel(&self, task_id: &str) -> Result<TaskStatus, ApiError> {
        let id = ApiError::task_id(task_id)?;
        let execution = self
            .orchestrator
            .describe(task_id)
            .await?
            .ok_or_else(|| ApiError::not_found(task_id))?;
        if execution.status != ExecutionStatus::Running {
            return Err(ApiError::new(
                409,
                format!("task {task_id:?} has already ended; nothing to cancel"),
            ));
        }
        // Descendants first, deepest first: each ends `cancelled` with its own callback, and
        // none is left running without the task that waits for it.
        for descendant in
            crate::chain::running_descendants(self.orchestrator.as_ref(), &execution).await?
        {
            let Ok(child) = TaskId::parse(&descendant) else {
                continue;
            };
            if let Some(execution) = self.orchestrator.describe(&descendant).await? {
                self.cancel_one(&child, &execution).await?;
                tracing::info!(task_id = %descendant, parent = task_id, "descendant cancelled");
            }
        }
        self.cancel_one(&id, &execution).await?;
        tracing::info!(task_id, "task cancelled");
        self.status(task_id).await
    }
}

/// Every secret a task's request names: task secrets and git tokens.
fn secret_names(spec: &TaskSpec) -> impl Iterator<Item = &str> {
    spec.secrets
        .iter()
        .map(|secret| secret.secret.as_str())
        .chain(spec.git.iter().filter_map(|git| git.secret_name.as_deref()))
}
