//! Crash safety: executions survive the engine being dropped mid-step and re-opened.

use std::time::Duration;

use serde_json::{Value, json};

use super::*;
use crate::clock::SystemClock;
use crate::engine::runner;
use crate::ports::{ExecutionStatus, Orchestrator};

const WAIT_THEN_WORK: &str = r#"{
  "StartAt": "Sleep",
  "States": {
    "Sleep": {"Type": "Wait", "Seconds": 3600, "Next": "Work"},
    "Work": {"Type": "Task", "Resource": "work", "End": true}
  }
}"#;

#[tokio::test]
async fn a_wait_resumes_from_its_stored_deadline_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("e.db");
    let clock = manual_clock();
    let calls = Calls::default();
    {
        let engine = open(
            &db,
            WAIT_THEN_WORK,
            vec![("work", handler(|_| Ok(json!(0))))],
            &clock,
        );
        engine.start("c", &json!({"n": 1})).await.expect("start");
        runner::run(&engine, "c").await.expect("run into the Wait");
        // The process dies half-way through the Wait.
    }
    clock.advance(Duration::from_secs(1800));

    let work = recording(&calls, &clock, |_| Ok(json!("done")));
    let engine = open(&db, WAIT_THEN_WORK, vec![("work", work)], &clock);
    engine.run_until_idle().await.expect("resume");
    let view = engine
        .describe("c")
        .await
        .expect("describe")
        .expect("exists");
    assert_eq!(view.status, ExecutionStatus::Succeeded);
    assert_eq!(view.output, Some(json!("done")));
    let calls = calls.all();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0].0,
        t0() + chrono::Duration::hours(1),
        "the Wait ended at its stored deadline, not an hour after the restart"
    );
    assert_eq!(
        event_types(&engine, "c").await,
        [
            "ExecutionStarted",
            "WaitStateEntered",
            "WaitStateExited",
            "TaskStateEntered",
            "TaskScheduled",
            "TaskStarted",
            "TaskSucceeded",
            "TaskStateExited",
            "ExecutionSucceeded"
        ]
    );
}

/// Never answers the first call (the process dies during it); answers the later ones.
struct HangsOnce(Calls);

#[async_trait]
impl TaskHandler for HangsOnce {
    async fn invoke(&self, payload: Value) -> Result<Value, TaskFailure> {
        self.0.record(t0(), &payload);
        if self.0.count() == 1 {
            std::future::pending::<()>().await;
        }
        Ok(json!("second time lucky"))
    }
}

#[tokio::test]
async fn a_task_in_progress_at_a_crash_runs_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("e.db");
    let clock = manual_clock();
    let calls = Calls::default();
    let definition = r#"{"StartAt": "Work", "States": {"Work": {"Type": "Task", "Resource": "work", "End": true}}}"#;
    {
        let hangs: Arc<dyn TaskHandler> = Arc::new(HangsOnce(calls.clone()));
        let engine = open(&db, definition, vec![("work", hangs)], &clock);
        engine.start("t", &json!({})).await.expect("start");
        // The runner is dropped mid-task, as a dying process would drop it.
        let crashed =
            tokio::time::timeout(Duration::from_millis(50), runner::run(&engine, "t")).await;
        assert!(crashed.is_err(), "the first call hangs");
    }
    let again: Arc<dyn TaskHandler> = Arc::new(HangsOnce(calls.clone()));
    let engine = open(&db, definition, vec![("work", again)], &clock);
    engine.run_until_idle().await.expect("resume");
    let view = engine
        .describe("t")
        .await
        .expect("describe")
        .expect("exists");
    assert_eq!(view.status, ExecutionStatus::Succeeded);
    assert_eq!(
        calls.count(),
        2,
        "run again after the restart: at least once"
    );
    let types = event_types(&engine, "t").await;
    assert_eq!(types.iter().filter(|t| *t == "TaskScheduled").count(), 2);
}

#[tokio::test]
async fn the_scheduler_runs_new_and_resumed_executions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("e.db");
    let definition = r#"{
      "StartAt": "Nap",
      "States": {
        "Nap": {"Type": "Wait", "Seconds": 1, "Next": "Work"},
        "Work": {"Type": "Task", "Resource": "work", "End": true}
      }
    }"#;
    let handlers: HashMap<String, Arc<dyn TaskHandler>> =
        HashMap::from([("work".to_string(), handler(Ok))]);
    let engine = Engine::open(
        &db,
        definition,
        &HashMap::new(),
        handlers,
        Arc::new(SystemClock),
    )
    .expect("open");
    let scheduler = engine.spawn_scheduler();
    engine.start("a", &json!({"a": 1})).await.expect("start a");
    engine.start("b", &json!({"b": 2})).await.expect("start b");
    let mut done = 0;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let finished = engine
            .list(Some(ExecutionStatus::Succeeded), 10)
            .await
            .expect("list");
        done = finished.len();
        if done == 2 {
            break;
        }
    }
    scheduler.abort();
    assert_eq!(done, 2, "both executions finished under the scheduler");
    let a = engine
        .describe("a")
        .await
        .expect("describe")
        .expect("exists");
    assert_eq!(a.output, Some(json!({"a": 1})));
}
