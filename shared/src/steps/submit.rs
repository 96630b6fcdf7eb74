//! `submit`: take a place in line, cancel what the task supersedes, start the worker.

use crate::ports::{Admission, TerminateReason};
use crate::task::{TaskId, TaskSpec};

use super::{ExecutionInput, RunState, StepError, Steps, errors};

/// Starts the task's worker (idempotent per task id) and schedules the first poll. When the
/// deployment limits running tasks and there is no room, the task waits in line instead
/// (`phase: queued`) and `poll_worker` starts it when its turn comes.
#[tracing::instrument(name = "submit", skip_all, fields(task_id = %input.task.task_id))]
pub async fn submit(steps: &Steps, input: ExecutionInput) -> Result<RunState, StepError> {
    let task = &input.task;
    if task.cancel_in_progress {
        cancel_superseded(steps, task).await?;
    }
    match admit(steps, task).await? {
        Admission::Admitted => start(steps, task).await,
        Admission::Queued { ahead } => {
            tracing::info!(ahead, "task queued");
            Ok(RunState {
                worker: steps.worker.handle_for(&task.task_id),
                submitted_at: steps.clock.now(),
                phase: "queued".into(),
                done: false,
                wait_seconds: steps.config.poll.min_seconds,
                safety_seconds: steps.config.poll.min_seconds,
                polls: 0,
                ended: None,
            })
        }
    }
}

/// Asks the line whether the task may run now (always, without a line).
pub(super) async fn admit(steps: &Steps, task: &TaskSpec) -> Result<Admission, StepError> {
    match &steps.gate {
        Some(gate) => gate
            .admit(task.task_id.as_str(), task.concurrency_key.as_deref())
            .await
            .map_err(|err| StepError::from_port(err, errors::START_FAILED)),
        None => Ok(Admission::Admitted),
    }
}

/// Starts the worker; the task's clock (timeout, adaptive wait) starts now.
pub(super) async fn start(steps: &Steps, task: &TaskSpec) -> Result<RunState, StepError> {
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
        safety_seconds: super::poll::safety_seconds(steps, task, std::time::Duration::ZERO),
        polls: 0,
        ended: None,
    })
}

/// "Latest wins": cancels the running tasks that share this task's concurrency key.
async fn cancel_superseded(steps: &Steps, task: &TaskSpec) -> Result<(), StepError> {
    let (Some(gate), Some(key)) = (&steps.gate, &task.concurrency_key) else {
        return Ok(());
    };
    let running = gate
        .running_with_key(key)
        .await
        .map_err(|err| StepError::from_port(err, errors::START_FAILED))?;
    for other in running
        .iter()
        .filter(|other| *other != task.task_id.as_str())
    {
        let Ok(id) = TaskId::parse(other) else {
            continue;
        };
        tracing::info!(superseded = %other, "cancelling the running task this one replaces");
        steps
            .worker
            .terminate(&steps.worker.handle_for(&id), TerminateReason::Cancelled)
            .await
            .map_err(|err| StepError::from_port(err, errors::START_FAILED))?;
    }
    Ok(())
}
