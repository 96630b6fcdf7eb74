//! `submit`: start the worker.

use super::{ExecutionInput, RunState, StepError, Steps, errors};

/// Starts the task's worker (idempotent per task id) and schedules the first poll.
#[tracing::instrument(name = "submit", skip_all, fields(task_id = %input.task.task_id))]
pub async fn submit(steps: &Steps, input: ExecutionInput) -> Result<RunState, StepError> {
    let task = &input.task;
    let worker = steps
        .worker
        .start(task)
        .await
        .map_err(|err| StepError::from_port(err, errors::START_FAILED))?;
    tracing::info!(worker = %worker.id, "worker started");
    Ok(RunState {
        worker,
        submitted_at: steps.clock.now(),
        phase: "pending".into(),
        done: false,
        wait_seconds: steps.config.poll.min_seconds,
        polls: 0,
        ended: None,
    })
}
