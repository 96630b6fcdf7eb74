//! `cleanup`: the sweep that frees what finished tasks left behind.

use serde::{Deserialize, Serialize};

use crate::ports::{ExecutionStatus, Orchestrator, TerminateReason};
use crate::task::CALLBACK_TOKEN_PREFIX;

use super::{StepError, Steps, errors};

/// What one sweep did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanupReport {
    /// Workers terminated: their execution had ended (or vanished), or their keep time passed.
    pub workers_terminated: Vec<String>,
    /// Per-task callback tokens deleted because their execution had ended.
    pub callback_tokens_deleted: Vec<String>,
    /// Places in the task line held by executions that ended (a crash mid-finish).
    #[serde(default)]
    pub places_released: Vec<String>,
    /// Finished executions deleted past the retention period.
    pub executions_purged: u64,
}

/// Terminates workers whose execution ended (a kept worker only once its keep time has
/// passed), deletes callback tokens left by ended executions, and purges executions that
/// finished more than `retention_days` ago.
pub async fn cleanup(
    steps: &Steps,
    orchestrator: &dyn Orchestrator,
) -> Result<CleanupReport, StepError> {
    let now = steps.clock.now();
    let mut report = CleanupReport::default();
    let port = |err| StepError::from_port(err, errors::TRANSIENT);

    for worker in steps.worker.list().await.map_err(port)? {
        let running = orchestrator
            .describe(&worker.task_id)
            .await
            .map_err(port)?
            .is_some_and(|execution| execution.status == ExecutionStatus::Running);
        if running || worker.keep_until.is_some_and(|until| until > now) {
            continue;
        }
        steps
            .worker
            .terminate(&worker.handle, TerminateReason::Cleanup)
            .await
            .map_err(port)?;
        report.workers_terminated.push(worker.task_id);
    }

    for entry in steps
        .secrets
        .list(CALLBACK_TOKEN_PREFIX)
        .await
        .map_err(port)?
    {
        let task_id = entry.name.trim_start_matches(CALLBACK_TOKEN_PREFIX);
        let execution = orchestrator.describe(task_id).await.map_err(port)?;
        let ended = match execution {
            Some(execution) => execution.status != ExecutionStatus::Running,
            // A token stored by a submit whose execution never started: give the submit a
            // minute to finish starting it before treating the token as left over.
            None => now - entry.created_at > chrono::Duration::minutes(1),
        };
        if ended && steps.secrets.delete(&entry.name).await.map_err(port)? {
            report.callback_tokens_deleted.push(task_id.to_owned());
        }
    }

    if let Some(gate) = &steps.gate {
        for task_id in gate.holders().await.map_err(port)? {
            let running = orchestrator
                .describe(&task_id)
                .await
                .map_err(port)?
                .is_some_and(|execution| execution.status == ExecutionStatus::Running);
            if !running {
                gate.release(&task_id).await.map_err(port)?;
                report.places_released.push(task_id);
            }
        }
    }

    let retention = chrono::Duration::days(steps.config.retention_days as i64);
    report.executions_purged = orchestrator
        .purge_finished(now - retention)
        .await
        .map_err(port)?;
    if report != CleanupReport::default() {
        tracing::info!(
            workers = report.workers_terminated.len(),
            callback_tokens = report.callback_tokens_deleted.len(),
            executions = report.executions_purged,
            "cleanup sweep"
        );
    }
    Ok(report)
}
