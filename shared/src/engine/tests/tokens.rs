//! `.waitForTaskToken`: the token in the context object, answers, timeouts, heartbeats,
//! late and repeated answers, and a restart while waiting.

use std::sync::{OnceLock, Weak};
use std::time::Duration;

use serde_json::{Value, json};

use super::*;
use crate::engine::{TokenError, runner};
use crate::ports::{ExecutionStatus, Orchestrator};

/// Waits for its token (safety net from `$.t`, heartbeat from `$.beat` when given), then
/// goes on; a timeout (heartbeats included) goes to `Fallback`, a failure to `Failed`.
fn definition(heartbeat: &str) -> String {
    format!(
        r#"{{
      "StartAt": "Wait",
      "States": {{
        "Wait": {{
          "Type": "Task",
          "Resource": "arn:aws:states:::lambda:invoke.waitForTaskToken",
          "Parameters": {{"FunctionName": "arm", "Payload": {{"input.$": "$", "task_token.$": "$$.Task.Token"}}}},
          "TimeoutSecondsPath": "$.t",
          {heartbeat}
          "ResultPath": "$.answer",
          "Catch": [
            {{"ErrorEquals": ["States.Timeout"], "ResultPath": "$.error", "Next": "Fallback"}},
            {{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "Failed"}}
          ],
          "End": true
        }},
        "Fallback": {{"Type": "Pass", "End": true}},
        "Failed": {{"Type": "Pass", "End": true}}
      }}
    }}"#
    )
}

/// The tokens the `arm` handler was given, newest last.
#[derive(Clone, Default)]
struct Tokens(Arc<Mutex<Vec<String>>>);

impl Tokens {
    fn last(&self) -> String {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last()
            .cloned()
            .expect("the handler got a token")
    }

    fn count(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn handler(&self) -> Arc<dyn TaskHandler> {
        let tokens = self.clone();
        handler(move |payload| {
            let token = payload["task_token"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            tokens
                .0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(token);
            Ok(json!({"armed": true}))
        })
    }
}

fn waiting_engine(dir: &Path, heartbeat: &str, clock: &Arc<ManualClock>) -> (Arc<Engine>, Tokens) {
    let tokens = Tokens::default();
    let engine = open(
        &dir.join("e.db"),
        &definition(heartbeat),
        vec![("arm", tokens.handler())],
        clock,
    );
    (engine, tokens)
}

async fn view(engine: &Engine, name: &str) -> crate::ports::ExecutionView {
    engine
        .describe(name)
        .await
        .expect("describe")
        .expect("execution exists")
}

#[tokio::test]
async fn an_answered_token_resumes_the_task_with_its_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = manual_clock();
    let (engine, tokens) = waiting_engine(dir.path(), "", &clock);
    engine.start("x", &json!({"t": 1800})).await.expect("start");
    runner::run(&engine, "x").await.expect("run");
    let running = view(&engine, "x").await;
    assert_eq!(running.status, ExecutionStatus::Running);
    assert_eq!(running.current_state.as_deref(), Some("Wait"));

    let token = tokens.last();
    engine
        .send_task_success(&token, json!({"done": true}))
        .await
        .expect("the open wait takes the answer");
    engine.run_until_idle().await.expect("run");
    let done = view(&engine, "x").await;
    assert_eq!(done.status, ExecutionStatus::Succeeded);
    assert_eq!(
        done.output,
        Some(json!({"t": 1800, "answer": {"done": true}}))
    );
    assert_eq!(clock.now(), t0(), "nothing waited for the safety net");

    let types = event_types(&engine, "x").await;
    let task: Vec<&str> = types
        .iter()
        .map(String::as_str)
        .filter(|t| t.starts_with("Task") && *t != "TaskStateEntered" && *t != "TaskStateExited")
        .collect();
    assert_eq!(
        task,
        [
            "TaskScheduled",
            "TaskStarted",
            "TaskSubmitted",
            "TaskSucceeded"
        ]
    );
    let history = engine.history("x").await.expect("history");
    assert!(
        history
            .iter()
            .all(|e| !e.detail.to_string().contains(&token)),
        "the token is not in the history"
    );

    let again = engine.send_task_success(&token, json!({})).await;
    assert!(matches!(again, Err(TokenError::TaskTimedOut)), "{again:?}");
    let forged = engine.send_task_success("not-a-token", json!({})).await;
    assert!(
        matches!(forged, Err(TokenError::InvalidToken)),
        "{forged:?}"
    );
}

#[tokio::test]
async fn a_failure_answer_is_caught_by_its_error_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = manual_clock();
    let (engine, tokens) = waiting_engine(dir.path(), "", &clock);
    engine.start("x", &json!({"t": 60})).await.expect("start");
    runner::run(&engine, "x").await.expect("run");
    engine
        .send_task_failure(
            &tokens.last(),
            "TaskRunner.Cancelled",
            "cancelled by a user",
        )
        .await
        .expect("answer");
    engine.run_until_idle().await.expect("run");
    let done = view(&engine, "x").await;
    assert_eq!(done.status, ExecutionStatus::Succeeded);
    let output = done.output.expect("output");
    assert_eq!(output["error"]["Error"], "TaskRunner.Cancelled");
    assert_eq!(output["error"]["Cause"], "cancelled by a user");
}

#[tokio::test]
async fn an_unanswered_token_times_out_after_timeout_seconds_path_and_refuses_late_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = manual_clock();
    let (engine, tokens) = waiting_engine(dir.path(), "", &clock);
    engine.start("x", &json!({"t": 30})).await.expect("start");
    engine.run_until_idle().await.expect("run");
    let done = view(&engine, "x").await;
    assert_eq!(done.status, ExecutionStatus::Succeeded);
    let output = done.output.expect("output");
    assert_eq!(output["error"]["Error"], "States.Timeout");
    assert_eq!(clock.now() - t0(), chrono::Duration::seconds(30));
    assert!(
        event_types(&engine, "x")
            .await
            .contains(&"TaskTimedOut".to_string())
    );
    let late = engine.send_task_success(&tokens.last(), json!({})).await;
    assert!(matches!(late, Err(TokenError::TaskTimedOut)), "{late:?}");
}

#[tokio::test]
async fn a_missed_heartbeat_fails_with_heartbeat_timeout_which_states_timeout_catches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = manual_clock();
    let (engine, tokens) = waiting_engine(dir.path(), r#""HeartbeatSeconds": 10,"#, &clock);
    engine.start("x", &json!({"t": 100})).await.expect("start");
    runner::run(&engine, "x").await.expect("run");
    clock.advance(Duration::from_secs(8));
    engine
        .send_task_heartbeat(&tokens.last())
        .await
        .expect("heartbeat");
    engine.run_until_idle().await.expect("run");
    let done = view(&engine, "x").await;
    let output = done.output.expect("output");
    assert_eq!(output["error"]["Error"], "States.HeartbeatTimeout");
    assert_eq!(
        clock.now() - t0(),
        chrono::Duration::seconds(18),
        "the heartbeat at 8 s gave it 10 s more"
    );
}

#[tokio::test]
async fn heartbeat_seconds_must_be_below_timeout_seconds() {
    let text = definition(r#""HeartbeatSeconds": 10,"#).replace(
        r#""TimeoutSecondsPath": "$.t","#,
        r#""TimeoutSeconds": 10,"#,
    );
    let err = Engine::open(
        &tempfile::tempdir().expect("tempdir").path().join("e.db"),
        &text,
        &HashMap::new(),
        HashMap::from([("arm".to_string(), Tokens::default().handler())]),
        manual_clock(),
    )
    .err()
    .expect("refused");
    assert!(err.to_string().contains("HeartbeatSeconds"), "{err}");
}

#[tokio::test]
async fn a_restarted_engine_keeps_waiting_on_the_same_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = manual_clock();
    let token = {
        let (engine, tokens) = waiting_engine(dir.path(), "", &clock);
        engine.start("x", &json!({"t": 1800})).await.expect("start");
        runner::run(&engine, "x").await.expect("run");
        tokens.last()
    };
    let (engine, tokens) = waiting_engine(dir.path(), "", &clock);
    clock.advance(Duration::from_secs(60));
    runner::run(&engine, "x")
        .await
        .expect("run after the restart");
    assert_eq!(tokens.count(), 0, "the handler is not called again");
    engine
        .send_task_success(&token, json!({"after": "restart"}))
        .await
        .expect("the stored token still answers");
    engine.run_until_idle().await.expect("run");
    let done = view(&engine, "x").await;
    assert_eq!(
        done.output.expect("output")["answer"],
        json!({"after": "restart"})
    );
}

/// An `arm` handler that answers its own token before it returns: the race of a worker
/// that ends before its token is kept.
struct AnswersItself(Arc<OnceLock<Weak<Engine>>>);

#[async_trait]
impl TaskHandler for AnswersItself {
    async fn invoke(&self, payload: Value) -> Result<Value, TaskFailure> {
        let engine = self.0.get().and_then(Weak::upgrade).expect("engine");
        let token = payload["task_token"].as_str().unwrap_or_default();
        engine
            .send_task_success(token, json!({"early": true}))
            .await
            .map_err(|err| TaskFailure::new("Test.Answer", err.to_string()))?;
        Ok(json!({}))
    }
}

#[tokio::test]
async fn a_token_answered_before_its_handler_returns_is_not_missed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = manual_clock();
    let slot = Arc::new(OnceLock::new());
    let engine = open(
        &dir.path().join("e.db"),
        &definition(""),
        vec![("arm", Arc::new(AnswersItself(slot.clone())))],
        &clock,
    );
    let _ = slot.set(Arc::downgrade(&engine));
    engine.start("x", &json!({"t": 1800})).await.expect("start");
    engine.run_until_idle().await.expect("run");
    let done = view(&engine, "x").await;
    assert_eq!(
        done.output.expect("output")["answer"],
        json!({"early": true})
    );
    assert_eq!(clock.now(), t0());
}
