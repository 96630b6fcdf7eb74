use std::sync::Arc;

use chrono::Utc;
use serde_json::{Value, json};

use super::*;
use crate::adapters::memory::{MemoryTaskTokens, TokenAnswer};
use crate::ports::{
    Clock, ExecutionStatus, ExecutionView, Outcome, TaskEnd, TaskPhase, TaskTokens,
};
use crate::steps::testing::{FakeWorker, spec, steps};
use crate::steps::{ExecutionInput, RunState, Steps, submit};

const PROJECT: &str = "taskrunner-workers";

/// Steps over the fake worker whose tokens the test reads: each kept token answers once,
/// as `SendTaskSuccess` answers `TaskTimedOut`/`InvalidToken` for a used one.
fn steps_with_tokens(
    worker: Arc<FakeWorker>,
) -> (Steps, Arc<crate::clock::ManualClock>, Arc<MemoryTaskTokens>) {
    let (mut steps, clock) = steps(worker);
    let tokens = Arc::new(MemoryTaskTokens::default());
    steps.tokens = tokens.clone();
    (steps, clock, tokens)
}

fn resumed(tokens: &MemoryTaskTokens) -> Vec<(String, Value)> {
    tokens
        .answers()
        .into_iter()
        .filter_map(|(task, answer)| match answer {
            TokenAnswer::Resumed(output) => Some((task, output)),
            TokenAnswer::Failed(_) => None,
        })
        .collect()
}

/// A state-change event as CodeBuild sends it (the documented shape), for task `task_id`'s
/// build `build`.
fn state_change(task_id: &str, build: &str, status: &str) -> Value {
    json!({
        "version": "0", "id": "0f1e2d3c-0000-4000-8000-000000000001",
        "detail-type": "CodeBuild Build State Change", "source": "aws.codebuild",
        "account": "123456789012", "time": "2026-12-06T12:00:00Z", "region": "us-east-1",
        "resources": [format!("arn:aws:codebuild:us-east-1:123456789012:build/{build}")],
        "detail": {
            "build-status": status, "project-name": PROJECT,
            "build-id": format!("arn:aws:codebuild:us-east-1:123456789012:build/{build}"),
            "additional-information": {
                "environment": {
                    "image": "aws/codebuild/amazonlinux-x86_64-standard:5.0",
                    "type": "LINUX_CONTAINER", "compute-type": "BUILD_GENERAL1_SMALL",
                    "environment-variables": [
                        {"name": "GIT_TOKEN", "type": "SECRETS_MANAGER", "value": "taskrunner/github"},
                        {"name": "TASKRUNNER_TASK_ID", "type": "PLAINTEXT", "value": task_id}
                    ]
                },
                "build-complete": status != "IN_PROGRESS",
                "build-start-time": "Dec 6, 2026 11:58:00 AM"
            },
            "current-phase": "COMPLETED", "version": "1"
        }
    })
}

fn phase_change(task_id: &str, build: &str, phase: &str) -> Value {
    let mut event = state_change(task_id, build, "IN_PROGRESS");
    event["detail-type"] = json!("CodeBuild Build Phase Change");
    let detail = event["detail"].as_object_mut().unwrap();
    detail.remove("build-status");
    detail.insert("completed-phase".into(), json!(phase));
    detail.insert("completed-phase-status".into(), json!("SUCCEEDED"));
    event
}

#[test]
fn both_event_kinds_name_the_task_and_its_build() {
    let event = WorkerEvent::parse(&state_change("deploy-1", "p:u-1", "FAILED"), PROJECT).unwrap();
    assert_eq!(event.task_id.as_str(), "deploy-1");
    assert_eq!(event.build_id, "p:u-1");
    assert_eq!(event.change, "FAILED");
    let event = WorkerEvent::parse(&phase_change("deploy-1", "p:u-1", "BUILD"), PROJECT).unwrap();
    assert_eq!(event.change, "BUILD");
}

#[test]
fn events_of_other_builds_are_reasons_to_ignore() {
    let mut other = state_change("deploy-1", "b", "SUCCEEDED");
    other["detail"]["project-name"] = json!("someone-elses");
    let why = WorkerEvent::parse(&other, PROJECT).unwrap_err();
    assert!(why.contains("someone-elses"), "{why}");

    let mut bare = state_change("deploy-1", "b", "SUCCEEDED");
    bare["detail"]["additional-information"]["environment"]["environment-variables"] = json!([]);
    let why = WorkerEvent::parse(&bare, PROJECT).unwrap_err();
    assert!(why.contains("TASKRUNNER_TASK_ID"), "{why}");

    // A real event may lack whole sections the documentation shows.
    let mut sparse = state_change("deploy-1", "b", "SUCCEEDED");
    sparse["detail"]
        .as_object_mut()
        .unwrap()
        .remove("additional-information");
    assert!(WorkerEvent::parse(&sparse, PROJECT).is_err());

    let scheduled = json!({"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}});
    assert!(WorkerEvent::parse(&scheduled, PROJECT).is_err());
}

fn waiting(input: Value) -> ExecutionView {
    ExecutionView {
        name: "t".into(),
        status: ExecutionStatus::Running,
        input: Value::Null,
        output: None,
        error: None,
        cause: None,
        current_state: Some("a wait".into()),
        state_input: Some(input),
        started_at: Utc::now(),
        stopped_at: None,
        transitions: 3,
        history_events: 6,
    }
}

#[tokio::test]
async fn the_end_of_the_build_resumes_the_wait_with_the_polled_run_state() {
    let worker = Arc::new(FakeWorker::default());
    let (steps, clock, tokens) = steps_with_tokens(worker.clone());
    let run = submit(&steps, ExecutionInput { task: spec("t") })
        .await
        .unwrap();
    let input = json!({"task": spec("t"), "run": run});
    tokens.keep("t", "token").await.unwrap();
    let event = WorkerEvent::parse(&state_change("t", "t", "SUCCEEDED"), PROJECT).unwrap();

    // The event alone is not trusted: the build still runs, so nothing is resumed.
    worker.set(TaskPhase::Running {
        started_at: clock.now(),
    });
    let outcome = resume_if_ended(&steps, &event, Some(waiting(input.clone())))
        .await
        .unwrap();
    assert!(
        matches!(outcome, EventOutcome::Ignored { .. }),
        "{outcome:?}"
    );
    assert!(resumed(&tokens).is_empty());

    let end = TaskEnd {
        outcome: Outcome::Failed,
        exit_code: Some(3),
        reason: None,
        started_at: Some(clock.now()),
        finished_at: clock.now(),
    };
    worker.set(TaskPhase::Ended(end.clone()));
    let outcome = resume_if_ended(&steps, &event, Some(waiting(input.clone())))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        EventOutcome::Resumed {
            task_id: "t".into()
        }
    );
    let answers = resumed(&tokens);
    assert_eq!(answers.len(), 1);
    let output: RunState = serde_json::from_value(answers[0].1.clone()).unwrap();
    assert!(output.done);
    assert_eq!(output.ended, Some(end));
    assert_eq!(output.worker, run.worker);

    // The same event again (EventBridge delivers at least once): answered, nothing resumed.
    let outcome = resume_if_ended(&steps, &event, Some(waiting(input)))
        .await
        .unwrap();
    assert!(
        matches!(outcome, EventOutcome::Ignored { .. }),
        "{outcome:?}"
    );
    assert_eq!(resumed(&tokens).len(), 1);
}

#[tokio::test]
async fn events_for_no_open_wait_are_ignored() {
    let worker = Arc::new(FakeWorker::default());
    let (steps, clock, tokens) = steps_with_tokens(worker.clone());
    worker.set(TaskPhase::Ended(TaskEnd {
        outcome: Outcome::Succeeded,
        exit_code: Some(0),
        reason: None,
        started_at: None,
        finished_at: clock.now(),
    }));
    let run = submit(&steps, ExecutionInput { task: spec("t") })
        .await
        .unwrap();
    tokens.keep("t", "token").await.unwrap();
    let event = WorkerEvent::parse(&state_change("t", "t", "SUCCEEDED"), PROJECT).unwrap();

    let ignored = |outcome: EventOutcome| match outcome {
        EventOutcome::Ignored { reason } => reason,
        other => panic!("expected the event to be ignored, got {other:?}"),
    };
    let reason = ignored(resume_if_ended(&steps, &event, None).await.unwrap());
    assert!(reason.contains("no execution"), "{reason}");

    let mut over = waiting(json!({"task": spec("t"), "run": run}));
    over.status = ExecutionStatus::Succeeded;
    let reason = ignored(resume_if_ended(&steps, &event, Some(over)).await.unwrap());
    assert!(reason.contains("already over"), "{reason}");

    // Still in Submit: no run yet.
    let reason = ignored(
        resume_if_ended(&steps, &event, Some(waiting(json!({"task": spec("t")}))))
            .await
            .unwrap(),
    );
    assert!(reason.contains("not waiting"), "{reason}");

    // A build of an earlier start of the task (the run names another build).
    let earlier = WorkerEvent::parse(&state_change("t", "p:old", "FAILED"), PROJECT).unwrap();
    let reason = ignored(
        resume_if_ended(
            &steps,
            &earlier,
            Some(waiting(json!({"task": spec("t"), "run": run}))),
        )
        .await
        .unwrap(),
    );
    assert!(reason.contains("not task t's worker"), "{reason}");
    assert!(resumed(&tokens).is_empty());
    assert_eq!(worker.calls(), ["start"], "no build was read for these");
}
