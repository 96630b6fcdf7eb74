//! The real `infra/state-machine.asl.json`, run with fake handlers.

use std::time::Instant;

use serde_json::json;

use super::*;
use crate::ports::{ExecutionStatus, ExecutionView, Orchestrator};

const DEFINITION: &str = include_str!("../../../../infra/state-machine.asl.json");

/// How the fake worker behaves.
struct Script {
    /// The poll that reports the task done, or `None` to use `runs_for`.
    done_after_polls: Option<u64>,
    /// How long the task runs, when `done_after_polls` is `None`.
    runs_for: chrono::Duration,
    /// Whether Submit fails with a non-retried error.
    submit_fails: bool,
    /// How many FinishAndCallback calls fail with `TaskRunner.CallbackFailed` first.
    callback_failures: usize,
}

impl Default for Script {
    fn default() -> Self {
        Self {
            done_after_polls: Some(3),
            runs_for: chrono::Duration::zero(),
            submit_fails: false,
            callback_failures: 0,
        }
    }
}

struct Run {
    engine: Arc<Engine>,
    clock: Arc<ManualClock>,
    submits: Calls,
    arms: Calls,
    polls: Calls,
    finishes: Calls,
    _dir: tempfile::TempDir,
}

/// The poll function's safety net: the task's age, 1800 to 3600 seconds.
fn safety_for(elapsed: chrono::Duration) -> i64 {
    elapsed.num_seconds().clamp(1800, 3600)
}

/// poll-worker: armed by WaitForWorker (a payload with its task token), or polling once.
struct ArmOrPoll {
    arm: Arc<dyn TaskHandler>,
    poll: Arc<dyn TaskHandler>,
}

#[async_trait]
impl TaskHandler for ArmOrPoll {
    async fn invoke(&self, payload: serde_json::Value) -> Result<serde_json::Value, TaskFailure> {
        if payload.get("task_token").is_some() {
            self.arm.invoke(payload).await
        } else {
            self.poll.invoke(payload).await
        }
    }
}

fn setup(script: Script) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = manual_clock();
    let (submits, polls, finishes) = (Calls::default(), Calls::default(), Calls::default());
    let arms = Calls::default();

    let fails = script.submit_fails;
    let submit = recording(&submits, &clock, move |_| {
        if fails {
            return Err(TaskFailure::new(
                "TaskRunner.SecretMissing",
                "secret \"token\" does not exist",
            ));
        }
        Ok(
            json!({"worker": {"backend": "local", "id": "w-1"}, "phase": "pending",
                  "submitted_at": "2026-01-01T00:00:00Z", "ended": null,
                  "done": false, "wait_seconds": 5, "safety_seconds": 1800, "polls": 0}),
        )
    });

    let at = clock.clone();
    let (done_after, runs_for) = (script.done_after_polls, script.runs_for);
    // Nothing answers the armed waits here: every wait ends at its safety net.
    let arm = recording(&arms, &clock, |_| Ok(json!({})));
    let poll_once = recording(&polls, &clock, move |payload| {
        let now = at.now();
        let count = payload["run"]["polls"].as_u64().unwrap_or(0) + 1;
        let elapsed = now - t0();
        let done = match done_after {
            Some(n) => count >= n,
            None => elapsed >= runs_for,
        };
        Ok(
            json!({"worker": payload["run"]["worker"], "phase": if done { "ended" } else { "running" },
                  "submitted_at": payload["run"]["submitted_at"], "ended": null,
                  "done": done, "wait_seconds": 5, "safety_seconds": safety_for(elapsed), "polls": count}),
        )
    });
    let poll: Arc<dyn TaskHandler> = Arc::new(ArmOrPoll {
        arm,
        poll: poll_once,
    });

    let seen = finishes.clone();
    let failures = script.callback_failures;
    let finish = recording(&finishes, &clock, move |payload| {
        if seen.count() <= failures {
            return Err(TaskFailure::new(
                "TaskRunner.CallbackFailed",
                "callback receiver answered 503",
            ));
        }
        Ok(json!({"delivered": true, "error": payload["input"].get("error")}))
    });

    let substitutions = HashMap::from([
        ("SubmitFunctionArn".to_string(), "submit".to_string()),
        ("PollWorkerFunctionArn".to_string(), "poll".to_string()),
        (
            "FinishAndCallbackFunctionArn".to_string(),
            "finish".to_string(),
        ),
    ]);
    let handlers = HashMap::from([
        ("submit".to_string(), submit),
        ("poll".to_string(), poll),
        ("finish".to_string(), finish),
    ]);
    let dyn_clock: Arc<dyn Clock> = clock.clone();
    let engine = Engine::open(
        &dir.path().join("engine.db"),
        DEFINITION,
        &substitutions,
        handlers,
        dyn_clock,
    )
    .expect("the real definition opens");
    Run {
        engine,
        clock,
        submits,
        arms,
        polls,
        finishes,
        _dir: dir,
    }
}

async fn execute(run: &Run) -> ExecutionView {
    run.engine
        .start("task-1", &json!({"task_id": "task-1"}))
        .await
        .expect("start");
    run.engine.run_until_idle().await.expect("run");
    run.engine
        .describe("task-1")
        .await
        .expect("describe")
        .expect("exists")
}

#[tokio::test]
async fn a_worker_done_after_three_polls() {
    let run = setup(Script::default());
    let view = execute(&run).await;
    assert_eq!(view.status, ExecutionStatus::Succeeded);
    assert_eq!(view.output, Some(json!({"delivered": true, "error": null})));
    assert_eq!(run.polls.count(), 3);
    assert_eq!(run.finishes.count(), 1);
    let finish_payload = &run.finishes.all()[0].1;
    // The state's input, and where the task's children are listed.
    assert_eq!(
        finish_payload["state_machine_arn"],
        json!("arn:aws:states:local:0:stateMachine:taskrunner")
    );
    let finish_input = &finish_payload["input"];
    assert_eq!(finish_input["task_id"], json!("task-1"));
    assert_eq!(finish_input["run"]["done"], json!(true));
    assert_eq!(finish_input["run"]["polls"], json!(3));
    assert_eq!(run.arms.count(), 3, "each wait is armed with its own token");
    let tokens: std::collections::HashSet<String> = run
        .arms
        .all()
        .iter()
        .map(|(_, payload)| {
            payload["task_token"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(tokens.len(), 3, "a re-entered wait gets a new token");
    assert_eq!(
        run.arms.all()[0].1["input"]["run"]["safety_seconds"],
        json!(1800)
    );
    // Three safety nets (no end was heard), growing with the task's age: 1800, 1800, 3600 s.
    assert_eq!(run.clock.now() - t0(), chrono::Duration::seconds(7200));
    // Submit, 3 x (WaitForWorker, PollWorker, IsTaskDone), FinishAndCallback, Done.
    assert_eq!(view.transitions, 12);
    // Started + 5 (Submit) + 3 x (6 + 5 + 2) + 5 (Finish) + 2 (Done) + Succeeded.
    assert_eq!(view.history_events, 53);
    assert_eq!(view.current_state.as_deref(), Some("Done"));
}

#[tokio::test]
async fn a_failed_submit_still_calls_back_with_the_error() {
    let run = setup(Script {
        submit_fails: true,
        ..Script::default()
    });
    let view = execute(&run).await;
    assert_eq!(view.status, ExecutionStatus::Succeeded);
    assert_eq!(
        run.submits.count(),
        1,
        "a non-transient error is not retried"
    );
    assert_eq!(run.polls.count(), 0);
    let finish_input = &run.finishes.all()[0].1["input"];
    assert_eq!(
        finish_input["error"],
        json!({"Error": "TaskRunner.SecretMissing", "Cause": "secret \"token\" does not exist"})
    );
    assert_eq!(
        view.output,
        Some(json!({"delivered": true, "error": finish_input["error"]}))
    );
}

#[tokio::test]
async fn a_refused_callback_is_retried_until_delivered() {
    let run = setup(Script {
        callback_failures: 2,
        ..Script::default()
    });
    let view = execute(&run).await;
    assert_eq!(view.status, ExecutionStatus::Succeeded);
    let calls = run.finishes.all();
    assert_eq!(calls.len(), 3);
    // FULL jitter: each delay is within [0, 5 * 2^n] seconds.
    for (n, pair) in calls.windows(2).enumerate() {
        let gap = pair[1].0 - pair[0].0;
        assert!(gap >= chrono::Duration::zero());
        assert!(gap <= chrono::Duration::seconds(5 << n), "retry {n}: {gap}");
    }
}

#[tokio::test]
async fn an_undeliverable_callback_fails_the_execution() {
    let run = setup(Script {
        callback_failures: usize::MAX,
        ..Script::default()
    });
    let view = execute(&run).await;
    assert_eq!(view.status, ExecutionStatus::Failed);
    assert_eq!(
        view.error.as_deref(),
        Some("TaskRunner.CallbackUndeliverable")
    );
    assert_eq!(run.finishes.count(), 9, "one call and eight retries");
    assert_eq!(view.current_state.as_deref(), Some("CallbackUndeliverable"));
    let state_input = view.state_input.expect("state input");
    assert_eq!(
        state_input["callback_error"]["Error"],
        json!("TaskRunner.CallbackFailed")
    );
}

#[tokio::test]
async fn a_36_hour_task_runs_in_moments_under_a_manual_clock() {
    let run = setup(Script {
        done_after_polls: None,
        runs_for: chrono::Duration::hours(36),
        ..Script::default()
    });
    let real = Instant::now();
    let view = execute(&run).await;
    let took = real.elapsed();
    assert_eq!(view.status, ExecutionStatus::Succeeded);
    assert!(run.clock.now() - t0() >= chrono::Duration::hours(36));
    let polls = run.polls.all();
    let waits: Vec<i64> = polls
        .windows(2)
        .map(|pair| (pair[1].0 - pair[0].0).num_seconds())
        .collect();
    assert!(waits.iter().all(|w| (1800..=3600).contains(w)), "{waits:?}");
    println!(
        "36-hour task: {} polls, {} transitions, {} history events, {:?} real time",
        polls.len(),
        view.transitions,
        view.history_events,
        took
    );
}
