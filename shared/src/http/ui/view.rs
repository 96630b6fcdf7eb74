//! What the task page shows, read from the execution and its history: the path taken
//! through the state machine, the events, the callback attempts and a summary of the
//! request that holds secret *names* only.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::callback::deliver::rejected_status;
use crate::ports::{ExecutionEvent, ExecutionStatus, ExecutionView};
use crate::status::TaskStatus;
use crate::task::TaskSpec;

use super::graph::{END, START};

/// The state that delivers callbacks (each of its attempts is one delivery attempt): the
/// Task of the state machine whose Retry takes `TaskRunner.CallbackFailed`.
fn callback_state() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        let definition: serde_json::Value =
            serde_json::from_str(crate::embedded::STATE_MACHINE).unwrap_or_default();
        let retries_callbacks = |state: &serde_json::Value| {
            state["Retry"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|retrier| {
                    retrier["ErrorEquals"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|name| name == crate::steps::errors::CALLBACK_FAILED)
                })
        };
        definition["States"]
            .as_object()
            .and_then(|states| {
                states
                    .iter()
                    .find(|(_, state)| retries_callbacks(state))
                    .map(|(name, _)| name.clone())
            })
            .unwrap_or_default()
    })
}

/// `GET /ui/api/tasks/{task_id}?after=N`: the status, and the history events past the N-th
/// the page has seen. The page keeps the path taken and the callback attempts itself, from
/// the events, so a refresh carries only what is new.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct TaskView {
    /// The status, as `GET /task-runner/{task_id}` gives it.
    pub status: TaskStatus,
    /// The state the execution is in, or ended in.
    pub current: Option<String>,
    /// Whether the execution has ended (its last state leads to the end).
    pub ended: bool,
    /// The history events past the asked position, oldest first.
    pub events: Vec<EventRow>,
    /// How many events the history holds in all: the next refresh's `after`.
    pub events_total: u64,
    /// The state whose runs are callback attempts.
    pub callback_state: &'static str,
    /// The entry and exit pseudo-states of the graph.
    pub start: &'static str,
    /// See `start`.
    pub end: &'static str,
}

/// One history event, as the page lists it.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct EventRow {
    /// Its position in the history, from 1.
    pub id: u64,
    /// When.
    pub timestamp: DateTime<Utc>,
    /// Such as `TaskStateEntered`.
    pub event_type: String,
    /// The state concerned.
    pub state: Option<String>,
    /// Error and cause, for failures.
    pub detail: Option<String>,
    /// For the end of a callback attempt: what became of it.
    pub callback: Option<CallbackResult>,
}

/// How one callback delivery attempt ended (it started at the callback state's
/// `TaskStarted` before it).
#[derive(Debug, PartialEq, Serialize, schemars::JsonSchema)]
pub struct CallbackResult {
    /// Whether the receiver accepted it.
    pub delivered: bool,
    /// The receiver's HTTP status, when it answered.
    pub status_code: Option<u16>,
    /// Why it failed.
    pub error: Option<String>,
    /// The `webhook-id` header it carried.
    pub webhook_id: String,
}

/// Builds the page's view from the events past the `after`-th.
pub fn task_view(
    status: TaskStatus,
    execution: &ExecutionView,
    after: u64,
    events: &[ExecutionEvent],
) -> TaskView {
    let webhook_id = status
        .callback
        .as_ref()
        .map(|callback| callback.webhook_id.clone());
    TaskView {
        current: execution.current_state.clone(),
        ended: execution.status != ExecutionStatus::Running,
        events: events
            .iter()
            .zip(after.saturating_add(1)..)
            .map(|(event, id)| EventRow {
                id,
                timestamp: event.timestamp,
                event_type: event.event_type.clone(),
                state: event.state.clone(),
                detail: failure(event),
                callback: webhook_id
                    .as_deref()
                    .and_then(|webhook_id| callback_result(event, webhook_id)),
            })
            .collect(),
        events_total: after.saturating_add(u64::try_from(events.len()).unwrap_or(u64::MAX)),
        callback_state: callback_state(),
        start: START,
        end: END,
        status,
    }
}

fn failure(event: &ExecutionEvent) -> Option<String> {
    match (&event.error, &event.cause) {
        (Some(error), Some(cause)) => Some(format!("{error}: {cause}")),
        (Some(only), None) | (None, Some(only)) => Some(only.clone()),
        (None, None) => None,
    }
}

/// What a callback attempt came to, when `event` ends one: the step's report, or its error.
fn callback_result(event: &ExecutionEvent, webhook_id: &str) -> Option<CallbackResult> {
    if event.state.as_deref() != Some(callback_state()) {
        return None;
    }
    match event.event_type.as_str() {
        "TaskSucceeded" => {
            let output = event.output.as_ref();
            // A Lambda invocation's result wraps the step's output in `Payload`.
            let report = output
                .and_then(|output| output.get("Payload").or(Some(output)))
                .and_then(|output| output.get("callback"))
                .filter(|report| !report.is_null())?;
            Some(CallbackResult {
                delivered: report.get("delivered").and_then(Value::as_bool) == Some(true),
                status_code: report
                    .get("status_code")
                    .and_then(Value::as_u64)
                    .and_then(|code| u16::try_from(code).ok()),
                error: None,
                webhook_id: report
                    .get("webhook_id")
                    .and_then(Value::as_str)
                    .unwrap_or(webhook_id)
                    .to_owned(),
            })
        }
        "TaskFailed" | "TaskTimedOut" => Some(CallbackResult {
            delivered: false,
            status_code: event.cause.as_deref().and_then(rejected_status),
            error: failure(event),
            webhook_id: webhook_id.to_owned(),
        }),
        _ => None,
    }
}

/// The request, as the page summarises it: nothing secret, and no URL credentials.
#[derive(Debug, Serialize)]
pub struct RequestSummary {
    /// The task file.
    pub task_file: String,
    /// Worker size, with its resources.
    pub worker: String,
    /// Repositories cloned: URL (credentials removed), branch or commit.
    pub repositories: Vec<String>,
    /// Secrets, by name, and the variable each becomes.
    pub secrets: Vec<String>,
    /// Names of the environment variables set (values left out).
    pub env_names: Vec<String>,
    /// Where the result goes (credentials and query removed).
    pub callback_url: Option<String>,
    /// Whether a callback bearer token was given (its value is never shown).
    pub callback_token: bool,
    /// The task's time limit.
    pub timeout_seconds: u64,
}

/// The summary of an execution's request, when its input holds a task.
pub fn request_summary(execution: &ExecutionView) -> Option<RequestSummary> {
    let task: TaskSpec = serde_json::from_value(execution.input.get("task")?.clone()).ok()?;
    Some(RequestSummary {
        task_file: task.task_file.to_string(),
        worker: format!(
            "{} ({} CPU, {} MiB)",
            task.worker.name, task.worker.cpus, task.worker.memory_mib
        ),
        repositories: task
            .git
            .iter()
            .map(|git| {
                let at = git
                    .commit
                    .as_deref()
                    .or(git.branch.as_deref())
                    .map(|at| format!(" @ {at}"))
                    .unwrap_or_default();
                let secret = git
                    .secret_name
                    .as_deref()
                    .map(|name| format!(" (token: secret {name})"))
                    .unwrap_or_default();
                format!(
                    "{}{at} → {}{secret}",
                    without_credentials(&git.remote_url),
                    git.local_path
                )
            })
            .collect(),
        secrets: task
            .secrets
            .iter()
            .map(|secret| format!("{} → ${}", secret.secret, secret.env))
            .collect(),
        env_names: task.env.keys().cloned().collect(),
        callback_url: task.callback_url.as_deref().map(without_credentials),
        callback_token: task.has_callback_token,
        timeout_seconds: task.timeout_seconds,
    })
}

/// A URL without user, password, query or fragment; a local path as it is.
fn without_credentials(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) if url.has_host() => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.set_query(None);
            url.set_fragment(None);
            url.to_string()
        }
        _ => raw.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn event(event_type: &str, state: Option<&str>) -> ExecutionEvent {
        ExecutionEvent {
            timestamp: Utc::now(),
            event_type: event_type.into(),
            state: state.map(str::to_owned),
            error: None,
            cause: None,
            output: None,
        }
    }

    #[test]
    fn attempts_read_from_the_callback_state() {
        assert_eq!(
            callback_state(),
            "FinishAndCallback",
            "found in the definition"
        );
        let mut failed = event("TaskFailed", Some(callback_state()));
        failed.error = Some("TaskRunner.CallbackFailed".into());
        failed.cause =
            Some("callback receiver answered HTTP 500 instead of a 2xx; it said: \"\"".into());
        let mut succeeded = event("TaskSucceeded", Some(callback_state()));
        succeeded.output = Some(
            json!({"Payload": {"callback": {"delivered": true, "status_code": 204, "webhook_id": "msg_t"}}}),
        );
        let history = [
            event("TaskSucceeded", Some("PollWorker")),
            event("TaskStarted", Some(callback_state())),
            failed,
            event("TaskStarted", Some(callback_state())),
            succeeded,
        ];
        let results: Vec<_> = history
            .iter()
            .map(|event| callback_result(event, "msg_t"))
            .collect();
        assert!(results[0].is_none() && results[1].is_none() && results[3].is_none());
        let failed = results[2].as_ref().expect("the failed attempt");
        assert_eq!((failed.delivered, failed.status_code), (false, Some(500)));
        assert!(failed.error.as_deref().unwrap().contains("HTTP 500"));
        let delivered = results[4].as_ref().expect("the delivered attempt");
        assert_eq!(
            (delivered.delivered, delivered.status_code),
            (true, Some(204))
        );
        assert_eq!(delivered.webhook_id, "msg_t");
    }

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(
            without_credentials("https://x-access-token:ghp_secret@github.com/o/r.git?t=1"),
            "https://github.com/o/r.git"
        );
        assert_eq!(without_credentials("/srv/repo"), "/srv/repo");
    }
}
