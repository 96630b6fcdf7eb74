//! `on_worker_event`: a CodeBuild event (the build ended, or its BUILD phase did) resumes the
//! execution waiting for that build.
//!
//! The event only says which task to look at: the task id comes from the build's plain-text
//! `TASKRUNNER_TASK_ID`, and the run state is computed as `poll_worker` computes it, from the
//! build as CodeBuild reports it now (one `BatchGetBuilds`), never from the event's own
//! fields. An event that concerns no waiting execution (another project, a build without the
//! variable, a duplicate, a late event after the safety-net poll) is answered without error,
//! so EventBridge does not retry it.

use serde::Serialize;
use serde_json::Value;

use crate::ports::{ExecutionStatus, ExecutionView, Orchestrator};
use crate::task::TaskId;

use super::{PollInput, StepError, Steps, errors, poll_worker};

/// The build's environment variable that names its task.
pub const TASK_ID_VARIABLE: &str = "TASKRUNNER_TASK_ID";

/// A CodeBuild event about one of the deployment's builds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerEvent {
    /// The task the build runs.
    pub task_id: TaskId,
    /// The build's id (`PROJECT:UUID`), as `BatchGetBuilds` and the worker handle name it.
    pub build_id: String,
    /// `build-status` for a state change, `completed-phase` for a phase change.
    pub change: String,
}

/// What became of an event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum EventOutcome {
    /// The waiting execution was resumed with the task's end.
    Resumed {
        /// The task.
        task_id: String,
    },
    /// Nothing to do, and why (logged at debug).
    Ignored {
        /// Why.
        reason: String,
    },
}

impl EventOutcome {
    fn ignored(reason: impl Into<String>) -> Self {
        EventOutcome::Ignored {
            reason: reason.into(),
        }
    }
}

impl WorkerEvent {
    /// Reads a `CodeBuild Build State Change` or `CodeBuild Build Phase Change` event of the
    /// project `project`. Real events may lack fields the documentation shows, so only the
    /// ones used here are required; anything else is a reason to ignore the event.
    pub fn parse(event: &Value, project: &str) -> Result<Self, String> {
        let text = |value: &Value| value.as_str().map(str::to_owned);
        if event["source"] != "aws.codebuild" {
            return Err(format!(
                "not a CodeBuild event (source {})",
                event["source"]
            ));
        }
        let detail = &event["detail"];
        let change = match event["detail-type"].as_str() {
            Some("CodeBuild Build State Change") => text(&detail["build-status"]),
            Some("CodeBuild Build Phase Change") => text(&detail["completed-phase"]),
            other => return Err(format!("not a build event (detail-type {other:?})")),
        }
        .ok_or("the event names no build-status or completed-phase")?;
        if detail["project-name"] != project {
            return Err(format!(
                "a build of project {}, not {project:?}",
                detail["project-name"]
            ));
        }
        // `arn:aws:codebuild:REGION:ACCOUNT:build/PROJECT:UUID`, or already `PROJECT:UUID`.
        let build_arn = text(&detail["build-id"]).ok_or("the event names no build-id")?;
        let build_id = build_arn
            .split_once(":build/")
            .map_or(build_arn.as_str(), |(_, id)| id)
            .to_owned();
        let variables = detail["additional-information"]["environment"]["environment-variables"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        let task_id = variables
            .iter()
            .find(|variable| variable["name"] == TASK_ID_VARIABLE)
            .and_then(|variable| variable["value"].as_str())
            .ok_or_else(|| format!("build {build_id} has no {TASK_ID_VARIABLE}"))?;
        let task_id = TaskId::parse(task_id)
            .map_err(|why| format!("build {build_id}: {TASK_ID_VARIABLE} {task_id:?} {why}"))?;
        Ok(Self {
            task_id,
            build_id,
            change,
        })
    }
}

/// Handles one EventBridge event: finds the task's execution, computes its run state as
/// `poll_worker` does and, when the task is over, resumes the execution's wait with it.
/// Only a failure to read the execution or the build, or to resume the wait, is an error
/// (Lambda retries it twice; the wait's safety net covers what is left).
pub async fn on_worker_event(
    steps: &Steps,
    orchestrator: &dyn Orchestrator,
    project: &str,
    event: &Value,
) -> Result<EventOutcome, StepError> {
    let event = match WorkerEvent::parse(event, project) {
        Ok(event) => event,
        Err(reason) => return Ok(EventOutcome::ignored(reason)),
    };
    let execution = orchestrator
        .describe(event.task_id.as_str())
        .await
        .map_err(|err| StepError::from_port(err, errors::POLL_FAILED))?;
    resume_if_ended(steps, &event, execution).await
}

/// The part of [`on_worker_event`] after the execution was read.
pub async fn resume_if_ended(
    steps: &Steps,
    event: &WorkerEvent,
    execution: Option<ExecutionView>,
) -> Result<EventOutcome, StepError> {
    let task_id = event.task_id.as_str();
    let Some(execution) = execution else {
        return Ok(EventOutcome::ignored(format!(
            "task {task_id} has no execution"
        )));
    };
    if execution.status != ExecutionStatus::Running {
        return Ok(EventOutcome::ignored(format!(
            "task {task_id} is already over"
        )));
    }
    // The latest state input holds the task and its run once the worker was started.
    let Some(input) = execution
        .state_input
        .and_then(|input| serde_json::from_value::<PollInput>(input).ok())
    else {
        return Ok(EventOutcome::ignored(format!(
            "task {task_id} is not waiting for a worker"
        )));
    };
    if input.run.done {
        return Ok(EventOutcome::ignored(format!(
            "task {task_id} is already finishing"
        )));
    }
    if input.run.worker.id != event.build_id {
        return Ok(EventOutcome::ignored(format!(
            "build {} is not task {task_id}'s worker",
            event.build_id
        )));
    }
    let run = poll_worker(steps, input).await?;
    if !run.done {
        return Ok(EventOutcome::ignored(format!(
            "task {task_id} has not ended (phase {})",
            run.phase
        )));
    }
    let output = serde_json::to_value(&run)
        .map_err(|err| StepError::new(errors::BAD_INPUT, err.to_string()))?;
    let resumed = steps
        .tokens
        .resume(task_id, &output)
        .await
        .map_err(|err| StepError::from_port(err, errors::POLL_FAILED))?;
    Ok(if resumed {
        EventOutcome::Resumed {
            task_id: task_id.to_owned(),
        }
    } else {
        // The wait already ended: a duplicate event, or the safety-net poll got there first
        // (or will: the token was not kept yet, and the wait checks the worker once kept).
        EventOutcome::ignored(format!("task {task_id} has no open wait"))
    })
}

#[cfg(test)]
#[path = "worker_event_tests.rs"]
mod tests;
