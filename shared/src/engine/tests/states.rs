//! State semantics: input/output processing, Choice, Retry, Catch, timeouts, start and stop.

use std::time::Duration;

use serde_json::{Value, json};

use super::*;
use crate::engine::runner;
use crate::ports::{ExecutionStatus, Orchestrator, StartOutcome};

async fn run_to_end(engine: &Engine, name: &str, input: Value) -> crate::ports::ExecutionView {
    assert_eq!(
        engine.start(name, &input).await.expect("start"),
        StartOutcome::Started
    );
    engine.run_until_idle().await.expect("run");
    engine
        .describe(name)
        .await
        .expect("describe")
        .expect("execution exists")
}

#[tokio::test]
async fn task_input_output_processing_like_the_aws_docs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = manual_clock();
    let calls = Calls::default();
    let hello = recording(&calls, &clock, |payload| {
        let who = payload["who"].as_str().unwrap_or("nobody");
        Ok(json!({"message": format!("Hello, {who}!"), "noise": 1}))
    });
    let definition = r#"{
      "StartAt": "Hello",
      "States": {
        "Hello": {
          "Type": "Task", "Resource": "hello",
          "InputPath": "$.lambda",
          "Parameters": {"who.$": "$.who", "run.$": "$$.Execution.Name", "static": 1,
                         "text.$": "States.Format('{} from {}', $.who, $$.State.Name)"},
          "ResultSelector": {"greeting.$": "$.message"},
          "ResultPath": "$.data.result",
          "OutputPath": "$.data",
          "Next": "Shape"
        },
        "Shape": {
          "Type": "Pass",
          "Parameters": {"all.$": "$", "list.$": "States.Array($.keep, 2)"},
          "ResultPath": "$.shaped",
          "End": true
        }
      }
    }"#;
    let engine = open(
        &dir.path().join("e.db"),
        definition,
        vec![("hello", hello)],
        &clock,
    );
    let view = run_to_end(
        &engine,
        "io",
        json!({"lambda": {"who": "AWS Step Functions"}, "data": {"keep": 1}}),
    )
    .await;
    assert_eq!(view.status, ExecutionStatus::Succeeded);
    let result = json!({"keep": 1, "result": {"greeting": "Hello, AWS Step Functions!"}});
    let mut expected = result.clone();
    expected["shaped"] = json!({"all": result, "list": [1, 2]});
    assert_eq!(view.output, Some(expected));
    assert_eq!(
        calls.all()[0].1,
        json!({"who": "AWS Step Functions", "run": "io", "static": 1,
               "text": "AWS Step Functions from Hello"})
    );
    assert_eq!(view.current_state.as_deref(), Some("Shape"));
    assert_eq!(view.transitions, 2);
}

#[tokio::test]
async fn null_result_path_keeps_input_and_null_output_path_gives_empty_object() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = manual_clock();
    let definition = r#"{
      "StartAt": "Discard",
      "States": {
        "Discard": {"Type": "Pass", "Result": {"x": 1}, "ResultPath": null, "Next": "Keep"},
        "Keep": {"Type": "Pass", "Result": "r", "ResultPath": "$.a.b.c", "Next": "Empty"},
        "Empty": {"Type": "Pass", "OutputPath": null, "Next": "End"},
        "End": {"Type": "Succeed"}
      }
    }"#;
    let engine = open(&dir.path().join("e.db"), definition, vec![], &clock);
    let view = run_to_end(&engine, "paths", json!({"in": true})).await;
    assert_eq!(view.output, Some(json!({})));
    let history = engine.history("paths").await.expect("history");
    let keep_exit = history
        .iter()
        .find(|e| e.event_type == "PassStateExited" && e.state.as_deref() == Some("Keep"))
        .expect("Keep exited");
    assert_eq!(
        keep_exit.detail["output"],
        json!({"in": true, "a": {"b": {"c": "r"}}})
    );
}

const CHOICE: &str = r#"{
  "StartAt": "Route",
  "States": {
    "Route": {
      "Type": "Choice",
      "Choices": [
        {"And": [{"Variable": "$.n", "IsNumeric": true}, {"Variable": "$.n", "NumericGreaterThanEquals": 10}], "Next": "Big"},
        {"Variable": "$.name", "StringMatches": "test-*", "Next": "Test"},
        {"Not": {"Variable": "$.flag", "IsPresent": true}, "Next": "NoFlag"}
      ]
    },
    "Big": {"Type": "Pass", "Result": "big", "End": true},
    "Test": {"Type": "Pass", "Result": "test", "End": true},
    "NoFlag": {"Type": "Pass", "Result": "noflag", "End": true}
  }
}"#;

#[tokio::test]
async fn choice_routes_by_rule_order_and_fails_without_match_or_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = manual_clock();
    let engine = open(&dir.path().join("e.db"), CHOICE, vec![], &clock);
    let cases = [
        ("a", json!({"n": 12, "name": "test-1"}), Some(json!("big"))),
        ("b", json!({"n": 2, "name": "test-1"}), Some(json!("test"))),
        ("c", json!({"n": 2, "name": "prod"}), Some(json!("noflag"))),
        ("d", json!({"n": 2, "name": "prod", "flag": 1}), None),
    ];
    for (name, input, expected) in cases {
        let view = run_to_end(&engine, name, input).await;
        assert_eq!(view.output, expected, "{name}");
        if expected.is_none() {
            assert_eq!(view.status, ExecutionStatus::Failed);
            assert_eq!(view.error.as_deref(), Some("States.NoChoiceMatched"));
            assert_eq!(
                event_types(&engine, name).await,
                ["ExecutionStarted", "ChoiceStateEntered", "ExecutionFailed"]
            );
        }
    }
}

fn retry_definition(retrier: &str) -> String {
    format!(
        r#"{{
          "StartAt": "Flaky",
          "States": {{
            "Flaky": {{
              "Type": "Task", "Resource": "flaky",
              "Parameters": {{"retry.$": "$$.State.RetryCount"}},
              "Retry": [{retrier}],
              "Catch": [{{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "Caught"}}],
              "End": true
            }},
            "Caught": {{"Type": "Pass", "End": true}}
          }}
        }}"#
    )
}

/// Steps the execution one runner pass at a time, returning the persisted delay before
/// each retry.
async fn persisted_delays(engine: &Engine, clock: &ManualClock, name: &str) -> Vec<Duration> {
    engine.start(name, &json!({})).await.expect("start");
    let mut delays = Vec::new();
    loop {
        runner::run(engine, name).await.expect("run");
        let cursor = engine
            .store
            .cursor(name)
            .await
            .expect("cursor")
            .expect("exists");
        let Some(wake_at) = cursor.wake_at else { break };
        if cursor.status != ExecutionStatus::Running {
            break;
        }
        let delay = (wake_at - clock.now()).to_std().expect("future wake");
        delays.push(delay);
        clock.advance(delay);
    }
    delays
}

#[tokio::test]
async fn retry_delays_grow_by_backoff_rate_up_to_the_cap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = manual_clock();
    let calls = Calls::default();
    let flaky = recording(&calls, &clock, |_| {
        Err(TaskFailure::new("Flaky.Error", "try again"))
    });
    let definition = retry_definition(
        r#"{"ErrorEquals": ["Flaky.Error"], "IntervalSeconds": 2, "BackoffRate": 3, "MaxAttempts": 4, "MaxDelaySeconds": 20}"#,
    );
    let engine = open(
        &dir.path().join("e.db"),
        &definition,
        vec![("flaky", flaky)],
        &clock,
    );
    let delays = persisted_delays(&engine, &clock, "r").await;
    let secs: Vec<u64> = delays.iter().map(Duration::as_secs).collect();
    assert_eq!(secs, vec![2, 6, 18, 20]);
    assert_eq!(calls.count(), 5);
    let retry_counts: Vec<Value> = calls
        .all()
        .into_iter()
        .map(|(_, p)| p["retry"].clone())
        .collect();
    assert_eq!(
        retry_counts,
        vec![json!(0), json!(1), json!(2), json!(3), json!(4)]
    );
    let view = engine
        .describe("r")
        .await
        .expect("describe")
        .expect("exists");
    assert_eq!(view.status, ExecutionStatus::Succeeded);
    assert_eq!(view.current_state.as_deref(), Some("Caught"));
    assert_eq!(
        view.output,
        Some(json!({"error": {"Error": "Flaky.Error", "Cause": "try again"}}))
    );
}

#[tokio::test]
async fn full_jitter_stays_within_the_delay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = manual_clock();
    let flaky = handler(|_| Err(TaskFailure::new("Flaky.Error", "again")));
    let definition = retry_definition(
        r#"{"ErrorEquals": ["States.TaskFailed"], "IntervalSeconds": 10, "BackoffRate": 2, "MaxAttempts": 6, "JitterStrategy": "FULL"}"#,
    );
    let engine = open(
        &dir.path().join("e.db"),
        &definition,
        vec![("flaky", flaky)],
        &clock,
    );
    let delays = persisted_delays(&engine, &clock, "j").await;
    assert_eq!(delays.len(), 6);
    for (n, delay) in delays.iter().enumerate() {
        let max = Duration::from_secs(10 * 2u64.pow(u32::try_from(n).expect("small")));
        assert!(*delay <= max, "retry {n}: {delay:?} > {max:?}");
    }
}

#[tokio::test]
async fn max_attempts_zero_never_retries_and_goes_to_catch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = manual_clock();
    let calls = Calls::default();
    let flaky = recording(&calls, &clock, |_| {
        Err(TaskFailure::new("Flaky.Error", "no"))
    });
    let definition = retry_definition(r#"{"ErrorEquals": ["States.ALL"], "MaxAttempts": 0}"#);
    let engine = open(
        &dir.path().join("e.db"),
        &definition,
        vec![("flaky", flaky)],
        &clock,
    );
    let view = run_to_end(&engine, "z", json!({})).await;
    assert_eq!(calls.count(), 1);
    assert_eq!(view.current_state.as_deref(), Some("Caught"));
    assert_eq!(
        event_types(&engine, "z").await,
        [
            "ExecutionStarted",
            "TaskStateEntered",
            "TaskScheduled",
            "TaskStarted",
            "TaskFailed",
            "TaskStateExited",
            "PassStateEntered",
            "PassStateExited",
            "ExecutionSucceeded"
        ]
    );
}

const CATCH: &str = r#"{
  "StartAt": "Work",
  "States": {
    "Work": {
      "Type": "Task", "Resource": "work", "TimeoutSeconds": 10,
      "Catch": [
        {"ErrorEquals": ["Custom.Error"], "ResultPath": "$.custom", "Next": "OnCustom"},
        {"ErrorEquals": ["States.TaskFailed"], "ResultPath": null, "Next": "OnOther"}
      ],
      "End": true
    },
    "OnCustom": {"Type": "Fail", "ErrorPath": "$.custom.Error", "CausePath": "$.custom.Cause"},
    "OnOther": {"Type": "Pass", "End": true}
  }
}"#;

#[tokio::test]
async fn catch_routes_by_error_name_with_the_error_object() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = manual_clock();
    let work = handler(|payload| match payload["mode"].as_str() {
        Some("custom") => Err(TaskFailure::new("Custom.Error", "custom cause")),
        Some("other") => Err(TaskFailure::new("Other.Error", "other cause")),
        _ => Ok(json!("fine")),
    });
    let engine = open(
        &dir.path().join("e.db"),
        CATCH,
        vec![("work", work)],
        &clock,
    );

    let view = run_to_end(&engine, "custom", json!({"mode": "custom"})).await;
    assert_eq!(view.status, ExecutionStatus::Failed);
    assert_eq!(view.error.as_deref(), Some("Custom.Error"));
    assert_eq!(view.cause.as_deref(), Some("custom cause"));
    assert_eq!(
        view.state_input,
        Some(
            json!({"mode": "custom", "custom": {"Error": "Custom.Error", "Cause": "custom cause"}})
        )
    );

    let view = run_to_end(&engine, "other", json!({"mode": "other"})).await;
    assert_eq!(view.status, ExecutionStatus::Succeeded);
    assert_eq!(view.output, Some(json!({"mode": "other"})));

    let view = run_to_end(&engine, "ok", json!({"mode": "ok"})).await;
    assert_eq!(view.output, Some(json!("fine")));
}

/// A handler that hangs: it lets ten minutes pass on the manual clock, then never answers.
struct Hangs(Arc<ManualClock>);

#[async_trait]
impl TaskHandler for Hangs {
    async fn invoke(&self, _payload: Value) -> Result<Value, TaskFailure> {
        self.0.advance(Duration::from_secs(600));
        std::future::pending().await
    }
}

#[tokio::test]
async fn timeout_seconds_raises_states_timeout_which_task_failed_does_not_catch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = manual_clock();
    let hangs: Arc<dyn TaskHandler> = Arc::new(Hangs(clock.clone()));
    let engine = open(
        &dir.path().join("e.db"),
        CATCH,
        vec![("work", hangs)],
        &clock,
    );
    let view = run_to_end(&engine, "slow", json!({})).await;
    assert_eq!(view.status, ExecutionStatus::Failed);
    assert_eq!(view.error.as_deref(), Some("States.Timeout"));
    let types = event_types(&engine, "slow").await;
    assert_eq!(
        types[types.len() - 2..],
        ["TaskTimedOut", "ExecutionFailed"]
    );
}

const WAIT: &str = r#"{
  "StartAt": "Sleep",
  "States": {
    "Sleep": {"Type": "Wait", "SecondsPath": "$.wait", "Next": "Until"},
    "Until": {"Type": "Wait", "TimestampPath": "$.until", "Next": "Work"},
    "Work": {"Type": "Task", "Resource": "work", "ResultPath": "$.result", "End": true}
  }
}"#;

#[tokio::test]
async fn start_is_idempotent_and_conflicts_on_different_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = manual_clock();
    let work = handler(|_| Ok(json!(1)));
    let engine = open(&dir.path().join("e.db"), WAIT, vec![("work", work)], &clock);
    let input = json!({"wait": 60, "until": "2026-01-01T00:00:00Z"});
    assert_eq!(
        engine.start("x", &input).await.expect("start"),
        StartOutcome::Started
    );
    assert_eq!(
        engine.start("x", &input).await.expect("again"),
        StartOutcome::AlreadyExists
    );
    assert_eq!(
        engine
            .start("x", &json!({"wait": 1}))
            .await
            .expect("conflict"),
        StartOutcome::Conflict
    );
    assert!(engine.start("", &input).await.is_err());
    engine.run_until_idle().await.expect("run");
    // Still the same after it finished.
    assert_eq!(
        engine.start("x", &input).await.expect("after"),
        StartOutcome::AlreadyExists
    );
    let listed = engine
        .list(Some(ExecutionStatus::Succeeded), 10)
        .await
        .expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].output,
        Some(json!({"wait": 60, "until": "2026-01-01T00:00:00Z", "result": 1}))
    );
    assert_eq!(
        engine
            .purge_finished(t0() + chrono::Duration::hours(1))
            .await
            .expect("purge"),
        1
    );
    assert!(engine.describe("x").await.expect("describe").is_none());
}

#[tokio::test]
async fn stop_aborts_and_nothing_runs_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = manual_clock();
    let calls = Calls::default();
    let work = recording(&calls, &clock, |_| Ok(json!(1)));
    let engine = open(&dir.path().join("e.db"), WAIT, vec![("work", work)], &clock);
    let input = json!({"wait": 3600, "until": "2026-01-01T00:00:00Z"});
    engine.start("s", &input).await.expect("start");
    runner::run(&engine, "s").await.expect("run");
    engine
        .stop("s", "User.Cancelled", "cancelled by test")
        .await
        .expect("stop");
    engine.run_until_idle().await.expect("idle");
    assert_eq!(calls.count(), 0);
    let view = engine
        .describe("s")
        .await
        .expect("describe")
        .expect("exists");
    assert_eq!(view.status, ExecutionStatus::Aborted);
    assert_eq!(view.error.as_deref(), Some("User.Cancelled"));
    assert_eq!(view.current_state.as_deref(), Some("Sleep"));
    assert_eq!(
        event_types(&engine, "s").await,
        ["ExecutionStarted", "WaitStateEntered", "ExecutionAborted"]
    );
    assert!(engine.stop("missing", "E", "C").await.is_err());
    assert_eq!(clock.now(), t0(), "an aborted Wait is not slept through");
}

#[tokio::test]
async fn waits_end_at_their_seconds_and_timestamps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = manual_clock();
    let calls = Calls::default();
    let work = recording(&calls, &clock, |_| Ok(json!(1)));
    let engine = open(&dir.path().join("e.db"), WAIT, vec![("work", work)], &clock);
    let view = run_to_end(
        &engine,
        "waits",
        json!({"wait": 90, "until": "2026-01-01T02:00:00Z"}),
    )
    .await;
    assert_eq!(view.status, ExecutionStatus::Succeeded);
    let history = engine.history("waits").await.expect("history");
    let exits: Vec<_> = history
        .iter()
        .filter(|e| e.event_type == "WaitStateExited")
        .map(|e| e.timestamp - t0())
        .collect();
    assert_eq!(
        exits,
        [chrono::Duration::seconds(90), chrono::Duration::hours(2)]
    );
    assert_eq!(calls.all()[0].0 - t0(), chrono::Duration::hours(2));
}

#[tokio::test]
async fn a_bad_seconds_path_fails_the_execution() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = manual_clock();
    let work = handler(|_| Ok(json!(1)));
    let engine = open(&dir.path().join("e.db"), WAIT, vec![("work", work)], &clock);
    let view = run_to_end(&engine, "bad", json!({"wait": "soon"})).await;
    assert_eq!(view.status, ExecutionStatus::Failed);
    assert_eq!(view.error.as_deref(), Some("States.Runtime"));
    assert!(view.cause.unwrap_or_default().contains("SecondsPath"));
}

#[tokio::test]
async fn open_rejects_a_task_without_handler() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock: Arc<dyn Clock> = manual_clock();
    let result = Engine::open(
        &dir.path().join("e.db"),
        WAIT,
        &HashMap::new(),
        HashMap::new(),
        clock,
    );
    let Err(err) = result else {
        panic!("opened without a handler for \"work\"");
    };
    assert!(err.to_string().contains("\"work\""), "{err}");
}

#[tokio::test]
async fn a_long_loop_of_states_that_call_nothing_runs_to_its_end_with_every_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = manual_clock();
    // 100 rounds of Pass and Choice: more steps than are kept in memory before a write.
    let definition = r#"{
      "StartAt": "Count",
      "States": {
        "Count": {"Type": "Pass", "Parameters": {"n.$": "States.MathAdd($.n, 1)"}, "Next": "More"},
        "More": {
          "Type": "Choice",
          "Choices": [{"Variable": "$.n", "NumericLessThan": 100, "Next": "Count"}],
          "Default": "Done"
        },
        "Done": {"Type": "Succeed"}
      }
    }"#;
    let engine = open(&dir.path().join("e.db"), definition, vec![], &clock);
    let view = run_to_end(&engine, "loop", json!({"n": 0})).await;
    assert_eq!(view.status, ExecutionStatus::Succeeded);
    assert_eq!(view.output, Some(json!({"n": 100})));
    assert_eq!(view.transitions, 201);
    let history = engine.history("loop").await.expect("history");
    assert_eq!(history.len(), 1 + 100 * 4 + 3);
    assert_eq!(u64::try_from(history.len()).ok(), Some(view.history_events));
    let last_rounds: Vec<(&str, &Value)> = history[history.len() - 7..]
        .iter()
        .map(|event| (event.event_type.as_str(), &event.detail))
        .collect();
    assert_eq!(
        last_rounds,
        [
            ("PassStateEntered", &json!({"input": {"n": 99}})),
            ("PassStateExited", &json!({"output": {"n": 100}})),
            ("ChoiceStateEntered", &json!({"input": {"n": 100}})),
            ("ChoiceStateExited", &json!({"output": {"n": 100}})),
            ("SucceedStateEntered", &json!({"input": {"n": 100}})),
            ("SucceedStateExited", &json!({"output": {"n": 100}})),
            ("ExecutionSucceeded", &json!({"output": {"n": 100}})),
        ]
    );
}
