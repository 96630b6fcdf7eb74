//! `finish_and_callback`: terminate the worker, read the log tail, POST the result.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::callback::{Delivery, DeliveryError};
use crate::model::CallbackBody;
use crate::ports::{
    DeliveryRecord, LogTail, Outcome, TaskEnd, TaskPhase, TerminateReason, WorkerHandle,
};
use crate::secret::Secret;
use crate::task::{TaskSpec, callback_token_secret_name, task_token_secret_name};

use super::{FinishInput, StepError, Steps, errors};

/// What became of the callback.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallbackReport {
    /// Whether the receiver accepted it (2xx).
    pub delivered: bool,
    /// The receiver's HTTP status.
    pub status_code: Option<u16>,
    /// The `webhook-id` it was sent with.
    pub webhook_id: String,
    /// Whether it carried Standard Webhooks signatures.
    pub signed: bool,
}

/// The execution's output: the callback body without the logs, and what became of the callback.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FinishOutput {
    /// The task id.
    pub task_id: String,
    /// The task file.
    pub task_name: String,
    /// True only when the task exited 0.
    pub success: bool,
    /// How it ended.
    pub status: Outcome,
    /// The exit code, when it ran and exited.
    pub exit_code: Option<i32>,
    /// Why, when it did not simply exit.
    pub reason: Option<String>,
    /// When it started running.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: DateTime<Utc>,
    /// Run time in seconds.
    pub duration_seconds: Option<f64>,
    /// Whether the log tail left earlier output out.
    pub logs_truncated: bool,
    /// The callback, when the task had a callback URL.
    pub callback: Option<CallbackReport>,
}

impl FinishOutput {
    /// How the task ended, as recorded here.
    pub fn end(&self) -> TaskEnd {
        TaskEnd {
            outcome: self.status,
            exit_code: self.exit_code,
            reason: self.reason.clone(),
            started_at: self.started_at,
            finished_at: self.finished_at,
        }
    }
}

/// Terminates the worker (when asked), then builds and delivers the callback.
///
/// A receiver that refuses (non-2xx) or cannot be reached gives `TaskRunner.CallbackFailed`,
/// which the state machine retries with backoff; the same `webhook-id` is sent every time.
#[tracing::instrument(name = "finish", skip_all, fields(task_id = %input.task.task_id))]
pub async fn finish_and_callback(
    steps: &Steps,
    input: FinishInput,
) -> Result<FinishOutput, StepError> {
    let FinishInput {
        task,
        run,
        error,
        state_machine_arn,
    } = input;
    let now = steps.clock.now();
    let handle = match &run {
        Some(run) => run.worker.clone(),
        None => steps.worker.handle_for(&task.task_id),
    };

    let mut end = match (&error, run.as_ref().and_then(|run| run.ended.clone())) {
        // Cancelled while the execution waited: the worker was terminated as cancelled, and
        // its end says how far it got.
        (Some(caught), _) if caught.error == errors::CANCELLED => {
            match steps.worker.status(&handle).await.map(|status| status.task) {
                Ok(TaskPhase::Ended(end)) => end,
                _ => TaskEnd {
                    outcome: Outcome::Cancelled,
                    exit_code: None,
                    reason: Some(caught.message()),
                    started_at: None,
                    finished_at: now,
                },
            }
        }
        (Some(caught), _) => TaskEnd {
            outcome: Outcome::Error,
            exit_code: None,
            reason: Some(caught.message()),
            started_at: None,
            finished_at: now,
        },
        (None, Some(end)) => end,
        (None, None) => match steps.worker.status(&handle).await {
            Ok(status) => match status.task {
                TaskPhase::Ended(end) => end,
                _ => TaskEnd {
                    outcome: Outcome::Error,
                    exit_code: None,
                    reason: Some("the task was still running when it had to be finished".into()),
                    started_at: None,
                    finished_at: now,
                },
            },
            Err(err) => TaskEnd {
                outcome: Outcome::Error,
                exit_code: None,
                reason: Some(format!("the worker's state could not be read: {err}")),
                started_at: None,
                finished_at: now,
            },
        },
    };

    // Terminate before calling back, so a receiver that acts on the callback finds the
    // worker gone. A start failure has no worker to stop.
    let worker_started = run.is_some();
    if worker_started && (task.terminate_on_completion || end.outcome == Outcome::Error) {
        steps
            .worker
            .terminate(&handle, TerminateReason::Completed)
            .await
            .map_err(|err| StepError::from_port(err, errors::TRANSIENT))?;
    }

    // Free the task's place in line before calling back, so the next task starts now.
    if let Some(gate) = &steps.gate {
        gate.release(task.task_id.as_str())
            .await
            .map_err(|err| StepError::from_port(err, errors::TRANSIENT))?;
    }

    let tail = if worker_started {
        steps
            .worker
            .log_tail(&handle, steps.config.log_tail_bytes)
            .await
            .unwrap_or_else(|err| LogTail {
                text: format!("[taskrunner] the log could not be read: {err}\n"),
                truncated: false,
            })
    } else {
        LogTail {
            text: String::new(),
            truncated: false,
        }
    };
    if end.started_at.is_none() {
        end.started_at = run
            .as_ref()
            .map(|run| run.submitted_at)
            .filter(|_| end.exit_code.is_some());
    }
    // A task token kept for a worker that could not be piped it (CodeBuild) goes now; the
    // token itself is refused from now on anyway, the task having ended.
    if let Err(err) = steps
        .secrets
        .delete(&task_token_secret_name(&task.task_id))
        .await
    {
        tracing::warn!(error = %err, "the task's token entry could not be deleted; the token is refused anyway, its task having ended");
    }
    let mut body = callback_body(&task, &end, tail);
    body.children = steps
        .children
        .children(
            &task.task_id,
            state_machine_arn.as_deref(),
            run.as_ref().map(|run| run.submitted_at),
        )
        .await
        .map_err(|err| StepError::from_port(err, errors::TRANSIENT))?;

    let callback = match &task.callback_url {
        Some(url) => Some(deliver(steps, &task, &handle, url, &body).await?),
        None => None,
    };
    tracing::info!(status = end.outcome.as_str(), "task finished");
    Ok(FinishOutput {
        task_id: body.task_id,
        task_name: body.task_name,
        success: body.success,
        status: body.status,
        exit_code: body.exit_code,
        reason: body.reason,
        started_at: body.started_at,
        finished_at: body.finished_at,
        duration_seconds: body.duration_seconds,
        logs_truncated: body.logs_truncated,
        callback,
    })
}

/// The callback body for a task that ended as `end`, with its log tail. A reason (clone
/// failure, timeout) is appended to the logs too, for receivers that read only `logs`.
pub fn callback_body(task: &TaskSpec, end: &TaskEnd, tail: LogTail) -> CallbackBody {
    let mut logs = tail.text;
    if let Some(reason) = &end.reason {
        if !logs.is_empty() && !logs.ends_with('\n') {
            logs.push('\n');
        }
        logs.push_str(&format!(
            "[taskrunner] {}: {reason}\n",
            end.outcome.as_str()
        ));
    }
    CallbackBody {
        task_name: task.task_file.to_string(),
        task_id: task.task_id.to_string(),
        success: end.outcome.is_success(),
        logs,
        status: end.outcome,
        exit_code: end.exit_code,
        reason: end.reason.clone(),
        started_at: end.started_at,
        finished_at: end.finished_at,
        duration_seconds: end
            .started_at
            .map(|start| (end.finished_at - start).num_milliseconds() as f64 / 1000.0),
        logs_truncated: tail.truncated,
        children: Vec::new(),
    }
}

async fn deliver(
    steps: &Steps,
    task: &TaskSpec,
    handle: &WorkerHandle,
    url: &str,
    body: &CallbackBody,
) -> Result<CallbackReport, StepError> {
    let webhook_id = format!("msg_{}", task.task_id);
    // This step may run again after its delivery went through (a crash, or a lost write of
    // the step): the record says so, and the receiver is not called twice.
    if let Ok(Some(record)) = steps.worker.recorded_delivery(handle).await {
        tracing::info!(webhook_id = record.webhook_id, "callback already delivered");
        return Ok(CallbackReport {
            delivered: true,
            status_code: Some(record.status_code),
            webhook_id: record.webhook_id,
            signed: record.signed,
        });
    }
    let token_name = callback_token_secret_name(&task.task_id);
    let token = if task.has_callback_token {
        let token = steps
            .secrets
            .get(&token_name)
            .await
            .map_err(|err| StepError::from_port(err, errors::CALLBACK_FAILED))?;
        if token.is_none() {
            // The token is deleted only after a delivery succeeded: this is a re-run of a
            // step whose delivery already went through.
            tracing::info!("callback already delivered (its token is gone)");
            return Ok(CallbackReport {
                delivered: true,
                status_code: None,
                webhook_id,
                signed: false,
            });
        }
        token
    } else {
        None
    };
    let signing_secrets: Vec<Secret> = steps
        .secrets
        .get(&steps.config.callback.signing_secret_name)
        .await
        .map_err(|err| StepError::from_port(err, errors::CALLBACK_FAILED))?
        .map(|value| value.expose().split_whitespace().map(Secret::new).collect())
        .unwrap_or_default();
    let delivery = Delivery {
        url,
        body,
        bearer_token: token.as_ref(),
        message_id: &webhook_id,
        signing_secrets: &signing_secrets,
        timestamp: steps.clock.now(),
    };
    match steps.callbacks.deliver(delivery).await {
        Ok(status) => {
            tracing::info!(status, "callback delivered");
            let record = DeliveryRecord {
                webhook_id: webhook_id.clone(),
                status_code: status,
                signed: !signing_secrets.is_empty(),
            };
            if let Err(err) = steps.worker.record_delivery(handle, &record).await {
                // Failing the step now would deliver again for certain.
                tracing::warn!(error = %err, "callback delivered, but its record could not be written");
            }
            if task.has_callback_token {
                steps
                    .secrets
                    .delete(&token_name)
                    .await
                    .map_err(|err| StepError::from_port(err, errors::TRANSIENT))?;
            }
            Ok(CallbackReport {
                delivered: true,
                status_code: Some(status),
                webhook_id,
                signed: !signing_secrets.is_empty(),
            })
        }
        Err(err @ DeliveryError::Refused(_)) => {
            tracing::warn!(error = %err, "callback refused");
            Err(StepError::new(errors::CALLBACK_REFUSED, err.to_string()))
        }
        Err(err) => {
            tracing::warn!(error = %err, "callback not delivered; it will be retried");
            Err(StepError::new(errors::CALLBACK_FAILED, err.to_string()))
        }
    }
}
