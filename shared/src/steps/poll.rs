//! `poll_worker`: read the worker's state, end a task past its timeout, pick the next wait.

use std::time::Duration;

use crate::ports::{Admission, Outcome, TaskEnd, TaskPhase, TerminateReason};
use crate::task::TaskSpec;

use super::submit::{admit, start};
use super::{PollInput, RunState, StepError, Steps, errors, phase_name};

/// Reads the worker's state. When the task is over, `done` is true and `ended` says how;
/// otherwise `wait_seconds` is about a tenth of the task's age, within the configured bounds,
/// and never past the task's deadline.
pub async fn poll_worker(steps: &Steps, input: PollInput) -> Result<RunState, StepError> {
    let PollInput { task, run } = input;
    if run.phase == "queued" {
        return poll_queued(steps, &task, run).await;
    }
    let status = steps
        .worker
        .status(&run.worker)
        .await
        .map_err(|err| StepError::from_port(err, errors::POLL_FAILED))?;
    let now = steps.clock.now();
    let age = (now - run.submitted_at).to_std().unwrap_or(Duration::ZERO);
    let timeout = Duration::from_secs(task.timeout_seconds);
    let polls = run.polls.saturating_add(1);

    if let TaskPhase::Ended(end) = status.task {
        return Ok(RunState {
            phase: "ended".into(),
            done: true,
            wait_seconds: 0,
            polls,
            ended: Some(end),
            ..run
        });
    }
    if age >= timeout {
        tracing::warn!(task_id = %task.task_id, "task ran past its timeout; terminating its worker");
        steps
            .worker
            .terminate(&run.worker, TerminateReason::TimedOut)
            .await
            .map_err(|err| StepError::from_port(err, errors::POLL_FAILED))?;
        let started_at = match status.task {
            TaskPhase::Running { started_at } => Some(started_at),
            _ => None,
        };
        return Ok(RunState {
            phase: "ended".into(),
            done: true,
            wait_seconds: 0,
            polls,
            ended: Some(TaskEnd {
                outcome: Outcome::TimedOut,
                exit_code: None,
                reason: Some(format!(
                    "the task ran longer than its timeout of {} seconds and was stopped",
                    task.timeout_seconds
                )),
                started_at,
                finished_at: now,
            }),
            ..run
        });
    }
    let remaining = (timeout - age).as_secs().saturating_add(1);
    Ok(RunState {
        phase: phase_name(&status.task).into(),
        done: false,
        wait_seconds: steps.config.poll.next_wait(age).min(remaining).max(1),
        polls,
        ended: None,
        ..run
    })
}

/// A task waiting in line: cancelled while waiting, started when its turn has come, or
/// still waiting (polled at the shortest wait: a place in line does not age).
async fn poll_queued(steps: &Steps, task: &TaskSpec, run: RunState) -> Result<RunState, StepError> {
    let polls = run.polls.saturating_add(1);
    let status = steps
        .worker
        .status(&run.worker)
        .await
        .map_err(|err| StepError::from_port(err, errors::POLL_FAILED))?;
    if let TaskPhase::Ended(end) = status.task {
        return Ok(RunState {
            phase: "ended".into(),
            done: true,
            wait_seconds: 0,
            polls,
            ended: Some(end),
            ..run
        });
    }
    match admit(steps, task).await? {
        Admission::Admitted => Ok(RunState {
            polls,
            ..start(steps, task).await?
        }),
        Admission::Queued { .. } => Ok(RunState {
            wait_seconds: steps.config.poll.min_seconds,
            polls,
            ..run
        }),
    }
}
