//! `submit`: start the worker.

use super::{ExecutionInput, RunState, StepError, Steps, errors};

/// Starts the task's worker (idempotent per task id) and schedules the first poll.
pub async fn submit(steps: &Steps, input: ExecutionInput) -> Result<RunState, StepError> {
    let task = &input.task;
    let _span = tracing::info_span!("submit", task_id = %task.task_id).entered();
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
