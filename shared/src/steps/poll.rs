//! `poll_worker`: read the worker's state, end a task past its timeout, pick the next wait.
//! `arm_wait`: the same check, once, after keeping the waiting execution's task token.

use std::time::Duration;

use crate::ports::{Admission, Outcome, TaskEnd, TaskPhase, TerminateReason};
use crate::task::TaskSpec;

use super::submit::{admit, start};
use super::{ArmInput, PollInput, RunState, StepError, Steps, errors, phase_name};

/// The safety net of a task this old: how long its execution waits for the worker's end
/// before it polls once, never past the task's timeout.
pub(super) fn safety_seconds(steps: &Steps, task: &TaskSpec, age: Duration) -> u64 {
    let remaining = Duration::from_secs(task.timeout_seconds).saturating_sub(age);
    steps
        .config
        .poll
        .safety_net(age)
        .min(remaining.as_secs().saturating_add(1))
        .max(1)
}

/// Keeps the execution's task token (`WaitForWorker` calls this with `$$.Task.Token`),
/// then checks the worker once: a worker that already ended (before the token was kept,
/// so its end could not resume anything) resumes the execution here, and so does a queued
/// task whose turn has come. The state machine ignores this result; the resume's output is
/// the wait's result.
#[tracing::instrument(name = "arm", skip_all, fields(task_id = %input.input.task.task_id))]
pub async fn arm_wait(steps: &Steps, input: ArmInput) -> Result<RunState, StepError> {
    let ArmInput { input, task_token } = input;
    let task_id = input.task.task_id.to_string();
    steps
        .tokens
        .keep(&task_id, &task_token)
        .await
        .map_err(|err| StepError::from_port(err, errors::POLL_FAILED))?;
    let was_queued = input.run.phase == "queued";
    let run = poll_worker(steps, input).await?;
    if run.done || (was_queued && run.phase != "queued") {
        let output = serde_json::to_value(&run)
            .map_err(|err| StepError::new(errors::POLL_FAILED, err.to_string()))?;
        let resumed = steps
            .tokens
            .resume(&task_id, &output)
            .await
            .map_err(|err| StepError::from_port(err, errors::POLL_FAILED))?;
        tracing::info!(resumed, phase = %run.phase, "worker checked once the wait was armed");
    }
    Ok(run)
}

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
            safety_seconds: 1,
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
            safety_seconds: 1,
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
        safety_seconds: safety_seconds(steps, &task, age),
        polls,
        ended: None,
        ..run
    })
}

/// A task waiting in line: cancelled while waiting, started when its turn has come, or
/// still waiting (polled at the shortest wait: a place in line does not age, and nothing
/// resumes the execution when its turn comes).
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
            safety_seconds: 1,
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
            safety_seconds: steps.config.poll.min_seconds,
            polls,
            ..run
        }),
    }
}
