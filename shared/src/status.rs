//! A task's status as users see it, read from what the orchestrator holds.
//!
//! The orchestrator's view (execution status, current state, its data) is turned into one
//! word (`starting`, `preparing`, `running`, `finishing`, then the outcome) and the facts a
//! user asks about: exit code, reason, times, and what became of the callback.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ports::{ExecutionStatus, ExecutionView, Outcome};
use crate::steps::{CaughtError, FinishOutput, RunState};

/// What became of a task's callback.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CallbackStatus {
    /// Whether the receiver accepted it.
    pub delivered: bool,
    /// The receiver's last HTTP status, when known.
    pub status_code: Option<u16>,
    /// The `webhook-id` it is sent with (stable across retries).
    pub webhook_id: String,
    /// Why it was not delivered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A repository the task clones, as its status shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RepositoryStatus {
    /// The remote URL.
    pub remote_url: String,
    /// The branch or tag, when one was given.
    pub branch: Option<String>,
    /// The exact commit checked out, when pinned (webhook pushes).
    pub commit: Option<String>,
}

/// `GET /task-runner/{task_id}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TaskStatus {
    /// The task id.
    pub task_id: String,
    /// The task file.
    pub task_name: String,
    /// `queued`, `starting`, `preparing`, `running`, `finishing`, then `succeeded`, `failed`,
    /// `timed_out`, `cancelled` or `error`.
    pub status: String,
    /// Whether the task is over (its callback may still be on its way).
    pub done: bool,
    /// True only when the task exited 0; absent while it runs.
    pub success: Option<bool>,
    /// The state-machine state the task is in.
    pub state: Option<String>,
    /// The worker size.
    pub worker_size: String,
    /// When the request was accepted.
    pub submitted_at: DateTime<Utc>,
    /// When the task started running.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Its exit code.
    pub exit_code: Option<i32>,
    /// Why, when it did not simply exit.
    pub reason: Option<String>,
    /// The callback, when the task has a callback URL.
    pub callback: Option<CallbackStatus>,
    /// State transitions so far.
    pub transitions: u64,
    /// The repositories the task clones, in order.
    #[serde(default)]
    pub repositories: Vec<RepositoryStatus>,
    /// The task that started this one with its task token, for a child task.
    #[serde(default)]
    pub parent_task_id: Option<String>,
    /// The tasks this one started, in the order it started them.
    #[serde(default)]
    pub children: Vec<crate::chain::ChildRef>,
}

/// Builds the user's view of an execution.
pub fn task_status(execution: &ExecutionView) -> TaskStatus {
    let task = execution.input.get("task").cloned().unwrap_or(Value::Null);
    let text = |value: &Value, key: &str| {
        value
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let mut status = TaskStatus {
        task_id: execution.name.clone(),
        task_name: text(&task, "task_file"),
        status: "starting".into(),
        done: false,
        success: None,
        state: execution.current_state.clone(),
        worker_size: task
            .get("worker")
            .map(|w| text(w, "name"))
            .unwrap_or_default(),
        submitted_at: execution.started_at,
        started_at: None,
        finished_at: None,
        exit_code: None,
        reason: None,
        callback: None,
        transitions: execution.transitions,
        repositories: task
            .get("git")
            .cloned()
            .and_then(|git| serde_json::from_value(git).ok())
            .unwrap_or_default(),
        parent_task_id: task
            .get("parent_task_id")
            .and_then(Value::as_str)
            .map(str::to_owned),
        children: Vec::new(),
    };
    let has_callback = task.get("callback_url").is_some_and(|url| !url.is_null());
    let webhook_id = format!("msg_{}", execution.name);
    let state_input = execution.state_input.clone().unwrap_or(Value::Null);

    // The last state of a finished execution is entered (and persisted) a moment before the
    // execution is marked finished: read such a state's input as the outcome already. Its
    // input tells which: the finish step's output (delivered), or the callback's error.
    let effective = match execution.status {
        ExecutionStatus::Running
            if serde_json::from_value::<FinishOutput>(state_input.clone()).is_ok() =>
        {
            ExecutionStatus::Succeeded
        }
        ExecutionStatus::Running if state_input.get("callback_error").is_some() => {
            ExecutionStatus::Failed
        }
        status => status,
    };
    let output = match execution.status {
        ExecutionStatus::Running => Some(state_input.clone()),
        _ => execution.output.clone(),
    };
    match effective {
        ExecutionStatus::Running => {
            let phase = state_input
                .get("run")
                .and_then(|run| run.get("phase"))
                .and_then(Value::as_str);
            // An error caught on the way (a start failure, a cancel) goes to the finish too.
            let caught = state_input.get("error").is_some();
            status.status = match phase {
                _ if caught => "finishing",
                Some("ended") => "finishing",
                Some("queued") => "queued",
                Some("preparing") => "preparing",
                Some("running") => "running",
                _ => "starting",
            }
            .into();
            if has_callback {
                status.callback = Some(CallbackStatus {
                    delivered: false,
                    status_code: None,
                    webhook_id,
                    error: None,
                });
            }
        }
        ExecutionStatus::Succeeded => {
            if let Some(output) =
                output.and_then(|output| serde_json::from_value::<FinishOutput>(output).ok())
            {
                apply_outcome(&mut status, output.status, output.exit_code, output.reason);
                status.started_at = output.started_at;
                status.finished_at = Some(output.finished_at);
                status.callback = output.callback.map(|report| CallbackStatus {
                    delivered: report.delivered,
                    status_code: report.status_code,
                    webhook_id: report.webhook_id,
                    error: None,
                });
            }
        }
        ExecutionStatus::Failed | ExecutionStatus::Aborted | ExecutionStatus::TimedOut => {
            let field = |key: &str| state_input.get(key).cloned().unwrap_or(Value::Null);
            let end = serde_json::from_value::<RunState>(field("run"))
                .ok()
                .and_then(|run| run.ended);
            let caught = serde_json::from_value::<CaughtError>(field("error")).ok();
            match (end, caught) {
                (_, Some(caught)) => {
                    apply_outcome(&mut status, Outcome::Error, None, Some(caught.message()))
                }
                (Some(end), None) => {
                    apply_outcome(&mut status, end.outcome, end.exit_code, end.reason);
                    status.started_at = end.started_at;
                    status.finished_at = Some(end.finished_at);
                }
                (None, None) => apply_outcome(
                    &mut status,
                    Outcome::Error,
                    None,
                    execution.cause.clone().or(execution.error.clone()),
                ),
            }
            status.finished_at = status.finished_at.or(execution.stopped_at);
            let callback_error = state_input
                .get("callback_error")
                .cloned()
                .and_then(|value| serde_json::from_value::<CaughtError>(value).ok())
                .map(|caught| caught.message())
                .or_else(|| execution.cause.clone());
            if has_callback {
                status.callback = Some(CallbackStatus {
                    delivered: false,
                    status_code: None,
                    webhook_id,
                    error: callback_error,
                });
            }
        }
    }
    status
}

fn apply_outcome(
    status: &mut TaskStatus,
    outcome: Outcome,
    exit_code: Option<i32>,
    reason: Option<String>,
) {
    status.status = outcome.as_str().into();
    status.done = true;
    status.success = Some(outcome.is_success());
    status.exit_code = exit_code;
    status.reason = reason;
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use serde_json::json;

    use super::*;

    fn execution(status: ExecutionStatus, state: &str, state_input: Value) -> ExecutionView {
        ExecutionView {
            name: "t".into(),
            status,
            input: json!({"task": {"task_file": "a.sh", "worker": {"name": "Small"}, "callback_url": "http://x/cb"}}),
            output: None,
            error: None,
            cause: None,
            current_state: Some(state.into()),
            state_input: Some(state_input),
            started_at: Utc::now(),
            stopped_at: None,
            transitions: 9,
            history_events: 30,
        }
    }

    #[test]
    fn an_execution_entering_its_last_state_already_shows_the_outcome() {
        let output = json!({"task_id": "t", "task_name": "a.sh", "success": false, "status": "cancelled",
            "exit_code": null, "reason": "cancelled", "started_at": null, "finished_at": Utc::now(),
            "duration_seconds": null, "logs_truncated": false,
            "callback": {"delivered": true, "status_code": 200, "webhook_id": "msg_t", "signed": false}});
        let status = task_status(&execution(ExecutionStatus::Running, "Done", output));
        assert_eq!(status.status, "cancelled");
        assert!(status.done);
        assert_eq!(status.callback.map(|c| c.delivered), Some(true));
    }

    #[test]
    fn phases_read_from_the_run() {
        let running = json!({"task": {}, "run": {"phase": "running"}});
        assert_eq!(
            task_status(&execution(
                ExecutionStatus::Running,
                "WaitForWorker",
                running
            ))
            .status,
            "running"
        );
        let ended = json!({"task": {}, "run": {"phase": "ended"}});
        assert_eq!(
            task_status(&execution(ExecutionStatus::Running, "IsTaskDone", ended)).status,
            "finishing"
        );
        let undeliverable = json!({"task": {"task_file": "a.sh"}, "run": {"worker": {"backend": "local", "id": "t"},
            "submitted_at": Utc::now(), "phase": "ended", "done": true, "wait_seconds": 0, "polls": 1,
            "ended": {"outcome": "failed", "exit_code": 1, "reason": null, "started_at": null, "finished_at": Utc::now()}},
            "callback_error": {"Error": "TaskRunner.CallbackFailed", "Cause": "receiver answered 500"}});
        let status = task_status(&execution(
            ExecutionStatus::Running,
            "CallbackUndeliverable",
            undeliverable,
        ));
        assert_eq!(status.status, "failed");
        assert_eq!(status.exit_code, Some(1));
        assert_eq!(
            status.callback.and_then(|c| c.error).as_deref(),
            Some("receiver answered 500")
        );
    }
}
