use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;

use super::testing::{FakeWorker, spec, steps};
use super::*;
use crate::ports::{Outcome, TaskEnd, TaskPhase};
use crate::secret::Secret;
use crate::task::{TaskSpec, callback_token_secret_name};

type Seen = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

async fn receiver(statuses: Vec<u16>) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let plan = Arc::new(Mutex::new(statuses));
    let app = Router::new()
        .route(
            "/cb",
            post(
                |State((seen, plan)): State<(Seen, Arc<Mutex<Vec<u16>>>)>,
                 headers: HeaderMap,
                 body: Bytes| async move {
                    seen.lock().unwrap().push((headers, body));
                    let mut plan = plan.lock().unwrap();
                    let status = if plan.is_empty() { 200 } else { plan.remove(0) };
                    StatusCode::from_u16(status).unwrap()
                },
            ),
        )
        .with_state((seen.clone(), plan));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/cb", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

#[tokio::test]
async fn polling_waits_longer_as_the_task_ages() {
    let worker = Arc::new(FakeWorker::default());
    let (steps, clock) = steps(worker.clone());
    let run = submit(&steps, ExecutionInput { task: spec("t") })
        .await
        .unwrap();
    assert_eq!(run.wait_seconds, 5);
    worker.set(TaskPhase::Running {
        started_at: clock.now(),
    });
    let mut waits = Vec::new();
    let mut run = run;
    for age in [10u64, 600, 3000] {
        clock
            .advance(Duration::from_secs(age) - (clock.now() - run.submitted_at).to_std().unwrap());
        run = poll_worker(
            &steps,
            PollInput {
                task: spec("t"),
                run,
            },
        )
        .await
        .unwrap();
        waits.push(run.wait_seconds);
    }
    assert_eq!(waits, vec![5, 60, 300]);
    assert_eq!(run.phase, "running");
    assert_eq!(run.polls, 3);
}

#[tokio::test]
async fn a_task_past_its_timeout_is_terminated_and_reported() {
    let worker = Arc::new(FakeWorker::default());
    let (steps, clock) = steps(worker.clone());
    let mut task = spec("slow");
    task.timeout_seconds = 60;
    let run = submit(&steps, ExecutionInput { task: task.clone() })
        .await
        .unwrap();
    worker.set(TaskPhase::Running {
        started_at: clock.now(),
    });
    clock.advance(Duration::from_secs(55));
    let run = poll_worker(
        &steps,
        PollInput {
            task: task.clone(),
            run,
        },
    )
    .await
    .unwrap();
    assert!(!run.done);
    assert!(
        run.wait_seconds <= 6,
        "never waits past the deadline: {}",
        run.wait_seconds
    );
    clock.advance(Duration::from_secs(6));
    let run = poll_worker(&steps, PollInput { task, run }).await.unwrap();
    assert!(run.done);
    assert_eq!(run.ended.unwrap().outcome, Outcome::TimedOut);
    assert!(worker.calls().contains(&"terminate:TimedOut".to_owned()));
}

#[tokio::test]
async fn finish_terminates_before_calling_back_and_forgets_the_token() {
    let worker = Arc::new(FakeWorker::default());
    *worker.log.lock().unwrap() = "line one\nline two\n".into();
    let (steps, clock) = steps(worker.clone());
    let (url, seen) = receiver(vec![]).await;
    let mut task = spec("done");
    task.callback_url = Some(url);
    task.has_callback_token = true;
    steps
        .secrets
        .put(
            &callback_token_secret_name(&task.task_id),
            &Secret::new("tok"),
        )
        .await
        .unwrap();
    let mut run = submit(&steps, ExecutionInput { task: task.clone() })
        .await
        .unwrap();
    run.ended = Some(TaskEnd {
        outcome: Outcome::Failed,
        exit_code: Some(2),
        reason: None,
        started_at: Some(clock.now()),
        finished_at: clock.now(),
    });
    let output = finish_and_callback(
        &steps,
        FinishInput {
            task: task.clone(),
            run: Some(run),
            error: None,
            state_machine_arn: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(output.status, Outcome::Failed);
    assert_eq!(output.callback.as_ref().map(|c| c.delivered), Some(true));
    assert_eq!(
        worker.calls().last().map(String::as_str),
        Some("terminate:Completed")
    );
    let (headers, body) = {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        seen[0].clone()
    };
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["logs"], "line one\nline two\n");
    assert_eq!(body["exit_code"], 2);
    assert_eq!(body["success"], false);
    assert_eq!(headers["authorization"], "Bearer tok");
    assert!(
        steps
            .secrets
            .get(&callback_token_secret_name(&task.task_id))
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_start_failure_still_calls_back_with_the_reason() {
    let worker = Arc::new(FakeWorker::default());
    let (steps, _) = steps(worker.clone());
    let (url, seen) = receiver(vec![]).await;
    let mut task = spec("nostart");
    task.callback_url = Some(url);
    let error = CaughtError {
        error: errors::START_FAILED.into(),
        cause: serde_json::json!({"errorType": errors::START_FAILED, "errorMessage": "personal secret \"X\" is missing"}).to_string(),
    };
    let output = finish_and_callback(
        &steps,
        FinishInput {
            task,
            run: None,
            error: Some(error),
            state_machine_arn: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(output.status, Outcome::Error);
    assert!(
        !worker
            .calls()
            .iter()
            .any(|call| call.starts_with("terminate")),
        "nothing to terminate"
    );
    let body: serde_json::Value = serde_json::from_slice(&seen.lock().unwrap()[0].1).unwrap();
    assert_eq!(body["status"], "error");
    assert!(
        body["logs"]
            .as_str()
            .unwrap()
            .contains("personal secret \"X\" is missing"),
        "{body}"
    );
}

#[tokio::test]
async fn a_finish_step_run_again_after_its_delivery_does_not_call_back_twice() {
    // The step's own write can be lost after the receiver accepted (kill -9 in between, a
    // failed write): the engine then runs the step again with the same input.
    let worker = Arc::new(FakeWorker::default());
    let (steps, clock) = steps(worker.clone());
    let (url, seen) = receiver(vec![]).await;
    let mut task = spec("twice");
    task.callback_url = Some(url);
    let mut run = submit(&steps, ExecutionInput { task: task.clone() })
        .await
        .unwrap();
    run.ended = Some(TaskEnd {
        outcome: Outcome::Succeeded,
        exit_code: Some(0),
        reason: None,
        started_at: None,
        finished_at: clock.now(),
    });
    let input = FinishInput {
        task,
        run: Some(run),
        error: None,
        state_machine_arn: None,
    };
    let first = finish_and_callback(&steps, input.clone()).await.unwrap();
    let again = finish_and_callback(&steps, input).await.unwrap();
    assert_eq!(seen.lock().unwrap().len(), 1, "one delivery for one end");
    assert_eq!(first.callback, again.callback);
    let callback = again.callback.expect("a callback report");
    assert!(callback.delivered);
    assert_eq!(callback.status_code, Some(200));
    assert_eq!(callback.webhook_id, "msg_twice");
}

#[tokio::test]
async fn a_refusing_receiver_is_a_retryable_error() {
    let worker = Arc::new(FakeWorker::default());
    let (steps, clock) = steps(worker.clone());
    let (url, _) = receiver(vec![503]).await;
    let mut task = spec("retry");
    task.callback_url = Some(url);
    let mut run = submit(&steps, ExecutionInput { task: task.clone() })
        .await
        .unwrap();
    run.ended = Some(TaskEnd {
        outcome: Outcome::Succeeded,
        exit_code: Some(0),
        reason: None,
        started_at: None,
        finished_at: clock.now(),
    });
    let input = FinishInput {
        task,
        run: Some(run),
        error: None,
        state_machine_arn: None,
    };
    let err = finish_and_callback(&steps, input.clone())
        .await
        .unwrap_err();
    assert_eq!(err.error, errors::CALLBACK_FAILED);
    assert!(err.cause.contains("503"), "{}", err.cause);
    let output = finish_and_callback(&steps, input).await.unwrap();
    assert!(output.success);
}

#[tokio::test]
async fn cleanup_frees_what_ended_executions_left_and_spares_the_rest() {
    use crate::engine::Engine;
    use crate::ports::{Orchestrator, WorkerSummary};
    use std::collections::HashMap;

    let worker = Arc::new(FakeWorker::default());
    let (steps, clock) = steps(worker.clone());
    let dir = tempfile::tempdir().unwrap();
    let mut handlers: HashMap<String, Arc<dyn crate::engine::TaskHandler>> = HashMap::new();
    handlers.insert("noop".into(), Arc::new(Noop));
    let engine = Engine::open(
        &dir.path().join("engine.db"),
        r#"{"StartAt": "Hold", "States": {"Hold": {"Type": "Wait", "Seconds": 3600, "End": true}}}"#,
        &HashMap::new(),
        handlers,
        clock.clone(),
    )
    .unwrap();
    engine
        .start("running", &serde_json::json!({}))
        .await
        .unwrap();
    let summary = |id: &str, keep: Option<i64>| WorkerSummary {
        handle: worker.handle_for(&crate::task::TaskId::parse(id).unwrap()),
        task_id: id.into(),
        holds_resources: true,
        keep_until: keep.map(|minutes| clock.now() + chrono::Duration::minutes(minutes)),
    };
    *worker.workers.lock().unwrap() = vec![
        summary("running", None),
        summary("gone", None),
        summary("kept", Some(30)),
        summary("expired", Some(-1)),
    ];
    for id in ["running", "gone"] {
        steps
            .secrets
            .put(
                &callback_token_secret_name(&crate::task::TaskId::parse(id).unwrap()),
                &Secret::new("x"),
            )
            .await
            .unwrap();
    }
    clock.advance(Duration::from_secs(120));

    let report = cleanup(&steps, engine.as_ref()).await.unwrap();
    assert_eq!(report.workers_terminated, vec!["gone", "expired"]);
    assert_eq!(report.callback_tokens_deleted, vec!["gone"]);
    assert_eq!(
        worker
            .calls()
            .iter()
            .filter(|call| *call == "terminate:Cleanup")
            .count(),
        2
    );
    assert!(engine.describe("running").await.unwrap().is_some());
}

struct Noop;

#[async_trait::async_trait]
impl crate::engine::TaskHandler for Noop {
    async fn invoke(
        &self,
        payload: serde_json::Value,
    ) -> Result<serde_json::Value, crate::engine::TaskFailure> {
        Ok(payload)
    }
}

#[tokio::test]
async fn arming_keeps_the_token_and_resumes_only_a_worker_that_already_ended() {
    use crate::adapters::memory::{MemoryTaskTokens, TokenAnswer};
    let worker = Arc::new(FakeWorker::default());
    let (mut steps, clock) = steps(worker.clone());
    let tokens = Arc::new(MemoryTaskTokens::default());
    steps.tokens = tokens.clone();
    let run = submit(&steps, ExecutionInput { task: spec("t") })
        .await
        .unwrap();
    assert_eq!(run.safety_seconds, 1800, "the default safety net");
    worker.set(TaskPhase::Running {
        started_at: clock.now(),
    });
    let arm = |run: RunState| ArmInput {
        input: PollInput {
            task: spec("t"),
            run,
        },
        task_token: "token-1".into(),
    };
    let armed = arm_wait(&steps, arm(run.clone())).await.unwrap();
    assert!(!armed.done);
    assert!(
        tokens.answers().is_empty(),
        "a running worker resumes nothing"
    );

    // The worker ends before the next wait's token is kept: arming resumes it itself.
    worker.set(TaskPhase::Ended(TaskEnd {
        outcome: Outcome::Succeeded,
        exit_code: Some(0),
        reason: None,
        started_at: None,
        finished_at: clock.now(),
    }));
    let ended = arm_wait(&steps, arm(run)).await.unwrap();
    assert!(ended.done);
    let answers = tokens.answers();
    assert_eq!(answers.len(), 1);
    let TokenAnswer::Resumed(output) = &answers[0].1 else {
        panic!("not resumed: {answers:?}");
    };
    let resumed: RunState = serde_json::from_value(output.clone()).unwrap();
    assert_eq!(resumed.ended.map(|end| end.exit_code), Some(Some(0)));
}

#[tokio::test]
async fn the_safety_net_never_reaches_past_the_task_timeout() {
    let worker = Arc::new(FakeWorker::default());
    let (steps, clock) = steps(worker.clone());
    let task = TaskSpec {
        timeout_seconds: 600,
        ..spec("t")
    };
    let run = submit(&steps, ExecutionInput { task: task.clone() })
        .await
        .unwrap();
    assert_eq!(run.safety_seconds, 601);
    worker.set(TaskPhase::Running {
        started_at: clock.now(),
    });
    clock.advance(Duration::from_secs(500));
    let run = poll_worker(&steps, PollInput { task, run }).await.unwrap();
    assert_eq!(run.safety_seconds, 101);
}

#[test]
fn a_caught_error_without_a_cause_reads_as_an_empty_cause() {
    let caught: CaughtError =
        serde_json::from_value(serde_json::json!({"Error": "TaskRunner.Cancelled", "Cause": null}))
            .unwrap();
    assert_eq!(caught.error, "TaskRunner.Cancelled");
    assert_eq!(caught.cause, "");
}
